//! `elton cert ...`, `elton token ...` and `elton whoami`: the cluster's
//! certificates (files on the master's host) and bearer tokens (kept by
//! the master).

use std::path::PathBuf;

use anyhow::{Result, anyhow};
use clap::{Args, Subcommand};
use elton_proto::pb;
use elton_trust::{ClusterCa, Role, TlsDir};

use super::client::{Endpoints, status};
use super::default_data_dir;

#[derive(Subcommand, Debug)]
pub enum CertCommand {
    /// Create a cluster CA and its master's certificate before the master's
    /// first start (which would otherwise create them), e.g. to exchange CAs
    /// with peers first.
    Init {
        /// The master's TLS directory (its --tls-dir) [default: $ELTON_HOME/pki].
        #[arg(long)]
        pki: Option<PathBuf>,
        /// The cluster's name (the master's --cluster).
        #[arg(long)]
        cluster: String,
        /// The master's id (its --id) [default: master].
        #[arg(long, default_value = "master")]
        id: String,
        /// Extra DNS name or IP address for the master (repeatable).
        #[arg(long = "tls-name")]
        names: Vec<String>,
    },
    /// Issue a node certificate signed by the cluster CA.
    Issue(IssueArgs),
    /// Print the cluster CA certificate (give it to peers: --peer NAME=URL,ca=FILE).
    ExportCa {
        /// The master's TLS directory [default: $ELTON_HOME/pki].
        #[arg(long)]
        pki: Option<PathBuf>,
    },
    /// Show the node, cluster and role a TLS directory's certificate names.
    Show {
        /// A TLS directory (node.pem, node.key, ca.pem).
        dir: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args, Debug)]
pub struct IssueArgs {
    /// The node's id (a slave's --node-id; a master's --id).
    #[arg(long)]
    pub node: String,
    /// What the certificate lets the node be.
    #[arg(long, default_value = "slave", value_parser = ["slave", "master"])]
    pub role: String,
    /// Extra DNS name or IP address (masters; repeatable).
    #[arg(long = "tls-name")]
    pub names: Vec<String>,
    /// Where to write node.pem, node.key and ca.pem (the node's --tls-dir).
    #[arg(long)]
    pub out: PathBuf,
    /// The master's TLS directory holding the CA [default: $ELTON_HOME/pki].
    #[arg(long)]
    pub pki: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
pub enum TokenCommand {
    /// Create a token; its secret is printed once.
    Create {
        /// What the token is for (shown in listings).
        #[arg(long, default_value = "token")]
        name: String,
        /// What it may do: read, write (and read), admin (everything).
        #[arg(long, value_parser = ["read", "write", "admin"])]
        scope: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// List tokens (never their secrets).
    Ls {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a token by its id.
    Revoke {
        /// The token's id (`elton token ls`), not its secret.
        id: String,
    },
}

fn pki_dir(pki: Option<PathBuf>) -> TlsDir {
    TlsDir::new(pki.unwrap_or_else(|| default_data_dir().join("pki")))
}

fn trust<T>(r: Result<T, elton_trust::TrustError>) -> Result<T> {
    r.map_err(|e| anyhow!("{e}"))
}

pub fn cert(c: CertCommand) -> Result<()> {
    match c {
        CertCommand::Init {
            pki,
            cluster,
            id,
            names,
        } => {
            let dir = pki_dir(pki);
            let creds = trust(elton_trust::pki::ensure_master(&dir, &cluster, &id, &names))?;
            println!(
                "cluster {} CA and master {} certificate in {}",
                creds.identity.cluster,
                creds.identity.node,
                dir.path().display()
            );
            Ok(())
        }
        CertCommand::Issue(a) => {
            let pki = pki_dir(a.pki);
            if !pki.has_ca_key() {
                return Err(anyhow!(
                    "{} holds no CA key: run this on the master's host, with --pki \
                     <master data dir>/pki",
                    pki.ca_key().display()
                ));
            }
            let ca = trust(ClusterCa::load(&pki))?;
            let role: Role = trust(a.role.parse())?;
            let issued = trust(ca.issue(&a.node, role, &a.names))?;
            let out = TlsDir::new(&a.out);
            trust(out.save_node(&issued, ca.cert_pem()))?;
            let check = trust(out.load_node())?;
            println!(
                "issued {} {} of cluster {} into {}",
                check.identity.role,
                check.identity.node,
                check.identity.cluster,
                a.out.display()
            );
            Ok(())
        }
        CertCommand::ExportCa { pki } => {
            print!("{}", trust(pki_dir(pki).ca_pem())?);
            Ok(())
        }
        CertCommand::Show { dir, json } => {
            let creds = trust(TlsDir::new(&dir).load_node())?;
            let id = &creds.identity;
            if json {
                println!(
                    "{}",
                    serde_json::json!({"node": id.node, "cluster": id.cluster, "role": id.role.as_str()})
                );
            } else {
                println!("{} {} of cluster {}", id.role, id.node, id.cluster);
            }
            Ok(())
        }
    }
}

fn token_json(t: &pb::TokenInfo) -> serde_json::Value {
    serde_json::json!({"id": t.id, "name": t.name, "scope": t.scope, "created_unix": t.created_unix})
}

pub async fn token(ep: &Endpoints, c: TokenCommand) -> Result<()> {
    let mut master = ep.master().await?;
    match c {
        TokenCommand::Create { name, scope, json } => {
            let r = master
                .create_token(pb::CreateTokenRequest { name, scope })
                .await
                .map_err(status)?
                .into_inner();
            let t = r
                .token
                .ok_or_else(|| anyhow!("the master returned no token"))?;
            if json {
                let mut v = token_json(&t);
                v["secret"] = r.secret.into();
                println!("{v}");
            } else {
                println!("{}", r.secret);
                eprintln!(
                    "token {} ({}, scope {}): the secret above is shown only once",
                    t.id, t.name, t.scope
                );
            }
        }
        TokenCommand::Ls { json } => {
            let tokens = master
                .list_tokens(pb::ListTokensRequest {})
                .await
                .map_err(status)?
                .into_inner()
                .tokens;
            if json {
                let list: Vec<_> = tokens.iter().map(token_json).collect();
                println!("{}", serde_json::Value::from(list));
            } else {
                println!("{:<16}  {:<6}  {:<10}  NAME", "ID", "SCOPE", "CREATED");
                for t in tokens {
                    println!(
                        "{:<16}  {:<6}  {:<10}  {}",
                        t.id, t.scope, t.created_unix, t.name
                    );
                }
            }
        }
        TokenCommand::Revoke { id } => {
            master
                .revoke_token(pb::RevokeTokenRequest { id: id.clone() })
                .await
                .map_err(status)?;
            println!("revoked {id}");
        }
    }
    Ok(())
}

pub async fn whoami(ep: &Endpoints, json: bool) -> Result<()> {
    let r = ep
        .master()
        .await?
        .who_am_i(pb::WhoAmIRequest {})
        .await
        .map_err(status)?
        .into_inner();
    if json {
        println!(
            "{}",
            serde_json::json!({"kind": r.kind, "name": r.name, "cluster": r.cluster, "role": r.role, "scope": r.scope})
        );
    } else if r.kind == "token" {
        println!("token {:?} (scope {})", r.name, r.scope);
    } else if r.kind == "insecure" {
        println!("insecure master: it checks nothing");
    } else {
        println!("{} {} of cluster {}", r.role, r.name, r.cluster);
    }
    Ok(())
}
