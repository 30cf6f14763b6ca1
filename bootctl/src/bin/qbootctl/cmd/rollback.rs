//! `qbootctl rollback`: make the other slot boot next.

use crate::*;

pub fn run(ctx: &mut Ctx) -> Result<Status, bootctl::Error> {
    status::rollback(ctx.t.esp.as_mut(), &ctx.product, ctx.t.vars.as_ref())
}
