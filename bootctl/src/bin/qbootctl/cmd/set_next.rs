//! `qbootctl set-next SLOT`: make SLOT boot next, with N tries.

use crate::*;

#[derive(clap::Args)]
pub struct Args {
    /// a or b.
    slot: Slot,
    /// Tries (1-9).
    #[arg(long, default_value_t = entries::DEFAULT_TRIES)]
    tries: u32,
}

pub fn run(ctx: &mut Ctx, a: &Args) -> Result<Status, bootctl::Error> {
    status::set_next(
        ctx.t.esp.as_mut(),
        &ctx.product,
        a.slot,
        a.tries,
        ctx.t.vars.as_ref(),
    )
}
