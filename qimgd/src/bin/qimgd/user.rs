//! `qimgd user add|passwd|remove|list`: the users file.

use std::io::BufRead;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use qimgd::users::Users;

#[derive(Subcommand)]
pub enum Command {
    /// Add a user.
    Add {
        /// The user name.
        name: String,
        /// Read the password from the first line of stdin (else it is prompted for).
        #[arg(long)]
        password_stdin: bool,
    },
    /// Change a user's password (their tokens stop working).
    Passwd {
        /// The user name.
        name: String,
        /// Read the password from the first line of stdin.
        #[arg(long)]
        password_stdin: bool,
    },
    /// Remove a user (their tokens stop working).
    Remove {
        /// The user name.
        name: String,
    },
    /// List the users.
    List,
}

fn password(from_stdin: bool) -> Result<String> {
    if !from_stdin {
        eprint!("Password: ");
    }
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .context("reading the password from stdin")?;
    let p = line.trim_end_matches(['\n', '\r']).to_string();
    if p.is_empty() {
        bail!("no password given");
    }
    Ok(p)
}

pub fn run(config: &qimgd::config::Config, c: Command) -> Result<ExitCode> {
    let mut users = Users::load(&config.users)?;
    match c {
        Command::Add {
            name,
            password_stdin,
        } => {
            users.add(&name, &password(password_stdin)?)?;
            eprintln!("qimgd: added user {name} to {}", config.users.display());
        }
        Command::Passwd {
            name,
            password_stdin,
        } => {
            users.passwd(&name, &password(password_stdin)?)?;
            eprintln!("qimgd: changed the password of {name}");
        }
        Command::Remove { name } => {
            users.remove(&name)?;
            eprintln!("qimgd: removed user {name}");
        }
        Command::List => {
            for u in users.list() {
                qutil::cli::out(&format!("{}\n", u.name))?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
