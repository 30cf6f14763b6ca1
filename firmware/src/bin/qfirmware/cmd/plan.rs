//! `qfirmware plan`: what a bundle's firmware would do on this node.

use crate::*;

pub fn run(ctx: Ctx, b: BundleArgs) -> Result<ExitCode> {
    let Ctx { cli, config } = ctx;
    let (_, _, items) = load(&b, &cli.root, &cli.esp, &config)?;
    if cli.json {
        print_json(&json!({"schema": PLAN_SCHEMA, "items": items}))?;
    } else {
        print_plan(&items)?;
    }
    Ok(code(refused(&items)))
}
