//! `qfirmware status`: devices, their installed versions, and the journal.

use crate::*;

pub fn run(ctx: Ctx) -> Result<ExitCode> {
    let Ctx { cli, config } = ctx;
    let devices = inventory(&cli.root, &config.probes())?;
    let journal = Journal::open(&cli.journal)?.all()?;
    if cli.json {
        print_json(&json!({"schema": STATUS_SCHEMA, "devices": devices, "journal": journal}))?;
    } else {
        for d in &devices {
            out(&format!(
                "{}: {}\n",
                d.component_id,
                serde_json::to_string(&d.installed)?
            ))?;
        }
        for r in &journal {
            out(&format!(
                "journal {}: {} -> {}: {}\n",
                r.component,
                r.from.as_deref().unwrap_or("?"),
                r.to,
                Step::text(&r.step)
            ))?;
        }
    }
    Ok(code(false))
}
