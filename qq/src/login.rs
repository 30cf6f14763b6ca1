//! `qq login -u USER [-p PASSWORD]` and `qq logout`: the agent's token, kept in
//! the credentials file Qumulo's client uses.

use std::io::BufRead;
use std::process::ExitCode;

use anyhow::{Context, Result};
use qapi::types::{LoginRequest, LoginResponse};

use crate::Ctx;

#[derive(clap::Args)]
pub struct Args {
    /// User name.
    #[arg(short, long)]
    username: String,
    /// Password (visible to `ps`; without it, the first line of stdin).
    #[arg(short, long)]
    password: Option<String>,
}

pub fn run(ctx: &Ctx, a: Args) -> Result<ExitCode> {
    let remote = ctx.require_remote("login")?;
    let password = match a.password {
        Some(p) => p,
        None => {
            eprint!("Password: ");
            let mut line = String::new();
            std::io::stdin()
                .lock()
                .read_line(&mut line)
                .context("reading the password from stdin")?;
            line.trim_end_matches(['\n', '\r']).to_string()
        }
    };
    let mut c = qapi::Client::new(remote.target.clone(), remote.options.clone())?;
    let r: LoginResponse = match c.post_json(
        "/v1/session/login",
        &LoginRequest {
            username: a.username,
            password,
        },
    ) {
        Ok(r) => r,
        Err(e) => return Ok(crate::remote::fail(&e)),
    };
    qapi::credentials::save(&remote.store, &r.bearer_token)?;
    eprintln!("qq: logged in; token kept in {}", remote.store.display());
    Ok(ExitCode::SUCCESS)
}

pub fn logout(ctx: &Ctx) -> Result<ExitCode> {
    let remote = ctx.require_remote("logout")?;
    if qapi::credentials::remove(&remote.store)? {
        eprintln!("qq: forgot the token in {}", remote.store.display());
    }
    Ok(ExitCode::SUCCESS)
}
