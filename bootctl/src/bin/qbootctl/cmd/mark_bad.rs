//! `qbootctl mark-bad`: mark the booted entry (or ENTRY) bad.

use crate::*;

#[derive(clap::Args)]
pub struct Args {
    /// Entry file name (default: the booted entry).
    entry: Option<String>,
}

pub fn run(ctx: &mut Ctx, a: &Args) -> Result<Status, bootctl::Error> {
    let vars = ctx.t.vars.as_ref();
    let e = status::target_entry(ctx.t.esp.as_mut(), &ctx.product, a.entry.as_deref(), vars)?;
    let new = entries::mark_bad(ctx.t.esp.as_mut(), &e)?;
    eprintln!("qbootctl: marked {e} bad as {new}");
    ctx.status()
}
