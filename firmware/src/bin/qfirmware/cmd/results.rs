//! `qfirmware results`: after a reboot, the results of staged updates.

use crate::*;

pub fn run(ctx: Ctx) -> Result<ExitCode> {
    let Ctx { cli, config } = ctx;
    let devices = inventory(&cli.root, &config.probes())?;
    let mut e = esp(&cli.esp)?;
    let r = results(
        &Journal::open(&cli.journal)?,
        &devices,
        &cli.root,
        e.as_mut().map(|b| &mut **b as &mut dyn Esp),
    )?;
    if cli.json {
        print_json(&json!({"schema": RESULTS_SCHEMA, "results": r}))?;
    } else {
        for x in &r {
            out(&format!("{}: {}\n", x.component, Step::text(&x.step)))?;
        }
    }
    Ok(code(
        r.iter().any(|x| matches!(x.step, Step::Failed { .. })),
    ))
}
