//! `qbootctl mark-good`: bless the booted entry (or ENTRY).

use crate::*;

#[derive(clap::Args)]
pub struct Args {
    /// Entry file name (default: the booted entry; offline, what would boot next).
    entry: Option<String>,
    /// Bless an entry that has never been tried (no boot counted yet).
    #[arg(long)]
    force: bool,
}

pub fn run(ctx: &mut Ctx, a: &Args) -> Result<Status, bootctl::Error> {
    let vars = ctx.t.vars.as_ref();
    let e = status::target_entry(ctx.t.esp.as_mut(), &ctx.product, a.entry.as_deref(), vars)?;
    let counter = bootctl::counter::EntryName::parse(&e, ".efi").and_then(|n| n.counter);
    if counter.is_none() {
        eprintln!("qbootctl: {e} is already good");
    } else if counter.is_some_and(|c| c.done == 0) && !a.force {
        // Blessing removes boot counting: an entry that never booted would lose the
        // fallback that protects the node if it cannot.
        let why = if vars.is_none() && a.entry.is_none() {
            " (offline, mark-good picks what the loader would boot next, not what booted)"
        } else {
            ""
        };
        return Err(bootctl::Error::NoEntry {
            reason: format!(
                "refusing to bless {e}: it has never been tried (0 boots counted){why}; \
                 blessing it would end its boot counting and its fallback. Boot it first, \
                 or pass --force"
            ),
        });
    } else {
        let new = entries::bless(ctx.t.esp.as_mut(), &ctx.product, &e)?;
        eprintln!("qbootctl: blessed {e} as {new}");
    }
    ctx.status()
}
