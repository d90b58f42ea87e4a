//! The `sealgate` binary: parse the command line, set up logging, then run
//! the gateway or a device command.

mod cli;

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;
use sealgate::admin::client::{AdminClient, ClientError, Credentials, DeviceView, LegacyKeysHex};
use sealgate::config::{Config, ProcessEnv, DEFAULT_TOML};

use cli::{ApiArgs, Cli, Command, DeviceAction, DeviceArgs, ProfileArg, TenantAction, TenantArgs};

fn main() -> ExitCode {
    let cli = Cli::parse();
    use tracing_subscriber::prelude::*;
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::EnvFilter::try_from_default_env()
                // rumqttd logs every client connection, and some client
                // input, at INFO: our own lines say what matters.
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,rumqttd=warn")),
        )
        // rumqttd opens ERROR-level spans for every message it routes (one
        // formats the topic): enabled at any level, they cost the router a
        // span allocation and a formatted field per message, and its few
        // warnings read as well without them.
        .with(tracing_subscriber::filter::filter_fn(|m| {
            let t = m.target();
            !(m.is_span() && (t == "rumqttd" || t.starts_with("rumqttd::")))
        }))
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())),
        )
        .init();
    match cli.command.unwrap_or(Command::Run) {
        Command::Run => run(cli.config),
        Command::GenerateConfig => {
            print!("{DEFAULT_TOML}");
            ExitCode::SUCCESS
        }
        Command::Device(args) => exit(device(args, cli.config)),
        Command::Tenant(args) => exit(tenant(args, cli.config)),
    }
}

fn exit(outcome: Result<(), String>) -> ExitCode {
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(config_path: Option<std::path::PathBuf>) -> ExitCode {
    // One descriptor per connection: take what the hard limit allows.
    if let Err(e) = rlimit::increase_nofile_limit(u64::MAX) {
        tracing::warn!(error = %e, "Cannot raise the open-files limit.");
    }
    let config = match Config::load(config_path.as_deref(), &ProcessEnv) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(sealgate::app::run(config, sealgate::shutdown::signal())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The admin API client for `args`: the token given, or the admin token file
/// of the configuration's data directory.
fn api_client(
    args: ApiArgs,
    config_path: Option<std::path::PathBuf>,
) -> Result<AdminClient, String> {
    let token = match args.admin_token {
        Some(t) => t,
        None => {
            let config =
                Config::load(config_path.as_deref(), &ProcessEnv).map_err(|e| e.to_string())?;
            let path = sealgate::secrets::admin_token_path(&config.data_dir);
            std::fs::read_to_string(&path)
                .map(|t| t.trim().to_owned())
                .map_err(|e| {
                    format!(
                        "no --admin-token or SEALGATE_ADMIN_TOKEN, and cannot read {}: {e}",
                        path.display()
                    )
                })?
        }
    };
    Ok(AdminClient::new(&args.admin_url, &token))
}

fn tenant(args: TenantArgs, config_path: Option<std::path::PathBuf>) -> Result<(), String> {
    let client = api_client(args.api, config_path)?;
    let e = |e: ClientError| e.to_string();
    let print = |v: &dyn erased::Json, json: bool| v.print(json);
    match args.action {
        TenantAction::Add { name, json } => print(&client.add_tenant(&name).map_err(e)?, json),
        TenantAction::RotateKey { name, json } => {
            print(&client.rotate_tenant_key(&name).map_err(e)?, json)
        }
        TenantAction::List { json } => print(&client.list_tenants().map_err(e)?, json),
        TenantAction::PairingCode { tenant, json } => {
            print(&client.pairing_code(tenant.as_deref()).map_err(e)?, json)
        }
        TenantAction::AddUser { name, tenant, json } => {
            print(&client.add_user(&name, tenant.as_deref()).map_err(e)?, json)
        }
        TenantAction::Users { json } => print(&client.list_users().map_err(e)?, json),
        TenantAction::RemoveUser { name } => {
            client.remove_user(&name).map_err(e)?;
            eprintln!("Deleted account {name}; its connections are closed.");
        }
    }
    Ok(())
}

/// Printing the tenant answers: JSON, or `key: value` lines.
mod erased {
    use sealgate::admin::client::{
        Claimed, PairingCode, TenantKey, TenantList, UserAccount, UserList,
    };

    pub trait Json {
        fn print(&self, json: bool);
    }

    fn as_json<T: serde::Serialize>(v: &T) {
        println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
    }

    impl Json for TenantKey {
        fn print(&self, json: bool) {
            if json {
                return as_json(self);
            }
            println!("tenant:  {}", self.name);
            println!("api_key: {}", self.api_key);
            eprintln!("The API key is shown once. Give it to the tenant now.");
        }
    }

    impl Json for TenantList {
        fn print(&self, json: bool) {
            if json {
                return as_json(self);
            }
            println!("{:<32} {:>8} CREATED", "TENANT", "DEVICES");
            for t in &self.tenants {
                println!("{:<32} {:>8} {}", t.name, t.devices, t.created_at);
            }
        }
    }

    impl Json for PairingCode {
        fn print(&self, json: bool) {
            if json {
                return as_json(self);
            }
            println!("pairing_code: {}", self.pairing_code);
            println!("tenant:       {}", self.tenant);
            println!("expires_at:   {}", self.expires_at);
        }
    }

    impl Json for UserAccount {
        fn print(&self, json: bool) {
            if json {
                return as_json(self);
            }
            println!("account:  {}", self.name);
            println!("tenant:   {}", self.tenant);
            if let Some(p) = &self.password {
                println!("password: {p}");
                eprintln!("The password is shown once.");
            }
        }
    }

    impl Json for UserList {
        fn print(&self, json: bool) {
            if json {
                return as_json(self);
            }
            println!("{:<32} TENANT", "ACCOUNT");
            for u in &self.users {
                println!("{:<32} {}", u.name, u.tenant);
            }
        }
    }

    impl Json for Claimed {
        fn print(&self, json: bool) {
            if json {
                return as_json(self);
            }
            println!("device_id:  {}", self.device_id);
            println!("tenant:     {}", self.tenant);
            println!("claimed_at: {}", self.claimed_at);
        }
    }
}

fn device(args: DeviceArgs, config_path: Option<std::path::PathBuf>) -> Result<(), String> {
    let client = api_client(args.api, config_path)?;
    let e = |e: ClientError| e.to_string();
    match args.action {
        DeviceAction::Add {
            id,
            label,
            profile,
            psk_hmac,
            psk_aes,
            iv,
            json,
        } => {
            let creds = match profile {
                ProfileArg::V1 => {
                    if psk_hmac.is_some() || psk_aes.is_some() || iv.is_some() {
                        return Err(
                            "--psk-hmac, --psk-aes and --iv need --profile legacy-ecowatt".into(),
                        );
                    }
                    client.add(&id, label.as_deref())
                }
                ProfileArg::LegacyEcowatt => {
                    let keys = LegacyKeysHex {
                        psk_hmac: psk_hmac.ok_or("--profile legacy-ecowatt needs --psk-hmac")?,
                        psk_aes: psk_aes.ok_or("--profile legacy-ecowatt needs --psk-aes")?,
                        iv: iv.ok_or("--profile legacy-ecowatt needs --iv")?,
                    };
                    client.add_legacy(&id, label.as_deref(), &keys)
                }
            };
            print_credentials(&creds.map_err(e)?, json)
        }
        DeviceAction::Migrate { id, json } => {
            print_credentials(&client.migrate(&id).map_err(e)?, json)
        }
        DeviceAction::Rotate { id, json } => {
            print_credentials(&client.rotate(&id).map_err(e)?, json)
        }
        DeviceAction::List { json } => {
            let list = client.list().map_err(e)?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&list).unwrap_or_default()
                );
            } else {
                println!(
                    "{:<32} {:<8} {:>4} {:<25} LABEL",
                    "DEVICE", "STATE", "KID", "LAST SEEN"
                );
                for d in list.devices {
                    println!(
                        "{:<32} {:<8} {:>4} {:<25} {}",
                        d.device_id,
                        d.state,
                        d.kid,
                        d.last_seen.as_deref().unwrap_or("never"),
                        d.label
                    );
                }
            }
        }
        DeviceAction::Show { id, json } => print_view(&client.show(&id).map_err(e)?, json),
        DeviceAction::Rename { id, label } => {
            print_view(&client.rename(&id, &label).map_err(e)?, false)
        }
        DeviceAction::Revoke { id } => print_view(&client.revoke(&id).map_err(e)?, false),
        DeviceAction::Assign { id, tenant } => {
            print_view(&client.assign(&id, &tenant).map_err(e)?, false)
        }
        DeviceAction::Release { id } => print_view(&client.release(&id).map_err(e)?, false),
        DeviceAction::Claim {
            id,
            claim_code,
            json,
        } => erased::Json::print(&client.claim_with_code(&id, &claim_code).map_err(e)?, json),
        DeviceAction::ResetNonce { id } => print_view(&client.reset_nonce(&id).map_err(e)?, false),
        DeviceAction::AddBulk { prefix, count, out } => {
            let bulk = client.add_bulk(&prefix, count).map_err(e)?;
            let mut opts = std::fs::OpenOptions::new();
            opts.write(true).create_new(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
            let mut f = opts
                .open(&out)
                .map_err(|err| format!("cannot create {}: {err} (devices were registered; rotate them to get new secrets)", out.display()))?;
            let text = serde_json::to_string_pretty(&bulk).unwrap_or_default();
            f.write_all(text.as_bytes())
                .map_err(|err| err.to_string())?;
            eprintln!(
                "Registered {} devices; credentials in {} (keep it secret).",
                bulk.devices.len(),
                out.display()
            );
        }
    }
    Ok(())
}

fn print_credentials(c: &Credentials, json: bool) {
    if json {
        println!("{}", serde_json::to_string(c).unwrap_or_default());
    } else {
        println!("device_id:     {}", c.device_id);
        println!("kid:           {}", c.kid);
        if c.secret.is_empty() {
            println!("mqtt_password: {}", c.mqtt_password);
            eprintln!("A legacy device keeps sealing with its imported keys; `device migrate` gives it a v1 secret.");
        } else {
            println!("secret:        {}", c.secret);
            println!("mqtt_password: {}", c.mqtt_password);
            eprintln!("The secret is shown once. Flash it into the device now.");
        }
    }
}

fn print_view(d: &DeviceView, json: bool) {
    if json {
        println!("{}", serde_json::to_string_pretty(d).unwrap_or_default());
        return;
    }
    println!("device_id:     {}", d.device_id);
    println!("label:         {}", d.label);
    println!("profile:       {}", d.profile);
    println!("state:         {}", d.state);
    if let Some(owner) = &d.owner {
        println!("owner:         {owner}");
    }
    println!("kid:           {}", d.kid);
    if let (Some(k), Some(u)) = (d.previous_kid, &d.previous_kid_valid_until) {
        println!("previous kid:  {k} (valid until {u})");
    }
    println!("created_at:    {}", d.created_at);
    println!(
        "last_seen:     {}",
        d.last_seen.as_deref().unwrap_or("never")
    );
    println!("highest_nonce: {}", d.highest_nonce);
}
