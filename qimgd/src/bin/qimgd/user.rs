//! `qimgd user add|passwd|remove|list`: the users, in the node's users file or,
//! on a node of a cluster, in the cluster's etcd (`qimgd::accounts`).

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

/// A change to the users, its password read before anything is changed.
enum Change {
    Add(String, String),
    Passwd(String, String),
    Remove(String),
}

impl Change {
    fn apply(&self, u: &mut Users) -> Result<(), qimgd::Error> {
        match self {
            Change::Add(name, pw) => u.add(name, pw),
            Change::Passwd(name, pw) => u.passwd(name, pw),
            Change::Remove(name) => u.remove(name),
        }
    }
}

pub fn run(config: &qimgd::config::Config, c: Command) -> Result<ExitCode> {
    let change = match &c {
        Command::Add {
            name,
            password_stdin,
        } => Some(Change::Add(name.clone(), password(*password_stdin)?)),
        Command::Passwd {
            name,
            password_stdin,
        } => Some(Change::Passwd(name.clone(), password(*password_stdin)?)),
        Command::Remove { name } => Some(Change::Remove(name.clone())),
        Command::List => None,
    };
    // In a cluster the users are the cluster's, in etcd; else the node's file.
    let (users, at) = match &config.cluster {
        Some(dir) => {
            let users = crate::block_on(async {
                let store = qimgd::accounts::connect(dir).await?;
                if let Some(ch) = &change {
                    qimgd::accounts::edit_cluster_users(&store, |u| ch.apply(u)).await?;
                }
                Ok(qimgd::accounts::cluster_users(&store, true).await?)
            })?;
            (users, qimgd::accounts::IN_CLUSTER.to_owned())
        }
        None => {
            let mut users = Users::load(&config.users)?;
            if let Some(ch) = &change {
                ch.apply(&mut users)?;
                users.save(&config.users)?;
            }
            (users, config.users.display().to_string())
        }
    };
    match c {
        Command::Add { name, .. } => eprintln!("qimgd: added user {name} to {at}"),
        Command::Passwd { name, .. } => {
            eprintln!("qimgd: changed the password of {name} in {at}")
        }
        Command::Remove { name } => eprintln!("qimgd: removed user {name} from {at}"),
        Command::List => {
            for u in users.list() {
                qutil::cli::out(&format!("{}\n", u.name))?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
