//! Command line: `sealgate [run]`, `generate-config`, and `device ...`, which
//! talks to a running gateway's admin API.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "sealgate", version, about = "Sealed-telemetry MQTT gateway")]
pub struct Cli {
    /// Configuration file (overrides the embedded broker.toml key by key).
    #[arg(long, global = true, env = "SEALGATE_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway (the default).
    Run,
    /// Print the default configuration (the embedded broker.toml).
    GenerateConfig,
    /// Manage devices through the running gateway's admin API. With a
    /// tenant's API key as token, only that tenant's devices.
    Device(DeviceArgs),
    /// Manage tenants (operator), or get a tenant's pairing code.
    Tenant(TenantArgs),
}

#[derive(Debug, clap::Args)]
pub struct TenantArgs {
    #[command(flatten)]
    pub api: ApiArgs,
    #[command(subcommand)]
    pub action: TenantAction,
}

#[derive(Debug, Subcommand)]
pub enum TenantAction {
    /// Create a tenant; prints its API key once.
    Add {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Every tenant, with how many devices it owns.
    List {
        #[arg(long)]
        json: bool,
    },
    /// A new API key for the tenant; the old one stops working at once.
    RotateKey {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// A dashboard account of the tenant: it sees that tenant's devices
    /// only, whatever it subscribes to. Prints its password once.
    AddUser {
        name: String,
        /// With the operator's token: whose account.
        #[arg(long)]
        tenant: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// The tenant's dashboard accounts (all, for the operator).
    Users {
        #[arg(long)]
        json: bool,
    },
    /// Delete a dashboard account; its connections are closed.
    RemoveUser { name: String },
    /// A one-time pairing code a device claims itself with: with a
    /// tenant's key, its own; the operator names the tenant.
    PairingCode {
        #[arg(long)]
        tenant: Option<String>,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, clap::Args)]
pub struct DeviceArgs {
    #[command(flatten)]
    pub api: ApiArgs,
    #[command(subcommand)]
    pub action: DeviceAction,
}

/// Where the admin API is and which key to use.
#[derive(Debug, clap::Args)]
pub struct ApiArgs {
    /// Admin API base URL.
    #[arg(
        long,
        env = "SEALGATE_ADMIN_URL",
        default_value = "http://127.0.0.1:8080"
    )]
    pub admin_url: String,
    /// Admin token, or a tenant's API key; defaults to the admin token file
    /// in the data directory.
    #[arg(long, env = "SEALGATE_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ProfileArg {
    V1,
    LegacyEcowatt,
}

#[derive(Debug, Subcommand)]
pub enum DeviceAction {
    /// Register a device; prints its secret once.
    Add {
        id: String,
        #[arg(long)]
        label: Option<String>,
        /// The envelope the device sends. `legacy-ecowatt` imports the keys
        /// of firmware already in the field (needs --psk-hmac, --psk-aes and
        /// --iv); such a device gets no v1 secret until `device migrate`.
        #[arg(long, value_enum, default_value = "v1")]
        profile: ProfileArg,
        /// Legacy HMAC key, hex (16 to 64 bytes). Prefer the environment
        /// variable: arguments are visible to other local users.
        #[arg(long, env = "SEALGATE_PSK_HMAC", hide_env_values = true)]
        psk_hmac: Option<String>,
        /// Legacy AES-128 key, hex (16 bytes).
        #[arg(long, env = "SEALGATE_PSK_AES", hide_env_values = true)]
        psk_aes: Option<String>,
        /// Legacy fixed IV, hex (16 bytes).
        #[arg(long, env = "SEALGATE_PSK_IV", hide_env_values = true)]
        iv: Option<String>,
        /// Print {"device_id","kid","secret","mqtt_password"}.
        #[arg(long)]
        json: bool,
    },
    /// Move a legacy device to v1: its imported keys are deleted and its v1
    /// secret is printed once; its nonce window carries over.
    Migrate {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// List active and revoked devices.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Show one device.
    Show {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Set a device's label.
    Rename { id: String, label: String },
    /// Refuse the device from now on.
    Revoke { id: String },
    /// New key version; the previous one stays valid for the grace period.
    Rotate {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Forget the device's nonce window (after its flash was wiped).
    ResetNonce { id: String },
    /// Give the device to a tenant (operator).
    Assign { id: String, tenant: String },
    /// Take the device from its tenant (operator).
    Release { id: String },
    /// Claim a device with the code printed on it (tenant key).
    Claim {
        id: String,
        #[arg(long)]
        claim_code: String,
        #[arg(long)]
        json: bool,
    },
    /// Register PREFIX0001..PREFIXn and write their credentials to FILE (mode 0600).
    AddBulk {
        #[arg(long)]
        prefix: String,
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=100_000))]
        count: u32,
        #[arg(long)]
        out: PathBuf,
    },
}
