//! `shoal certs ca|node`: the cluster CA and the node certificates signed by it.

use std::path::PathBuf;

use clap::Subcommand;

use crate::transport::certs;

#[derive(Subcommand, Debug)]
pub enum CertsCommand {
    /// Create a cluster CA: DIR/ca.crt and DIR/ca.key (keep the key off the nodes).
    Ca {
        #[arg(long)]
        out: PathBuf,
        /// Written into the CA's name, to tell clusters' CAs apart.
        #[arg(long, default_value = "shoal")]
        cluster_name: String,
    },
    /// Issue a node certificate signed by the CA in --ca: OUT/NAME.crt and OUT/NAME.key.
    Node {
        /// Directory holding ca.crt and ca.key.
        #[arg(long)]
        ca: PathBuf,
        /// The node's name (also its file names).
        #[arg(long)]
        name: String,
        #[arg(long)]
        out: PathBuf,
    },
}

pub fn run(command: CertsCommand) -> anyhow::Result<()> {
    let written = match command {
        CertsCommand::Ca { out, cluster_name } => certs::create_ca(&out, &cluster_name)?,
        CertsCommand::Node { ca, name, out } => certs::create_node_cert(&ca, &name, &out)?,
    };
    println!("{}", written.cert.display());
    println!("{}", written.key.display());
    Ok(())
}
