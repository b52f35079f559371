//! Developer tool: seeds a tenant's conversation in MongoDB and mints client tokens, for
//! trying the data plane by hand.
//!
//!   realtime-dev seed --tenant acme --conversation general --users alice,bob
//!   realtime-dev token --tenant acme --user alice

use clap::{Parser, Subcommand};
use mongodb::bson::doc;
use realtime::auth::{Claims, mint};
use realtime::protocol::{now_ms, validate_id};
use realtime::store::{CONVERSATIONS, Store};

#[derive(Parser)]
#[command(
    name = "realtime-dev",
    about = "Seed conversations and mint tokens for local use"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Secret that signs tokens (the gateway's JWT_SECRET).
    #[arg(long, env = "JWT_SECRET", hide_env_values = true, global = true)]
    jwt_secret: Option<String>,
    #[arg(long, env = "JWT_ISSUER", global = true)]
    jwt_issuer: Option<String>,
    #[arg(long, env = "JWT_AUDIENCE", global = true)]
    jwt_audience: Option<String>,
    /// Token lifetime in seconds.
    #[arg(long, default_value_t = 24 * 3600, global = true)]
    ttl_seconds: u64,
}

#[derive(Subcommand)]
enum Command {
    /// Create (or replace) a conversation with participants and print a token per user.
    Seed {
        #[arg(long, default_value = "demo")]
        tenant: String,
        #[arg(long, default_value = "general")]
        conversation: String,
        /// Comma-separated user ids; the first is the owner.
        #[arg(long, default_value = "alice,bob", value_delimiter = ',')]
        users: Vec<String>,
        #[arg(
            long,
            env = "MONGODB_URI",
            default_value = "mongodb://127.0.0.1:27017/"
        )]
        mongodb_uri: String,
        #[arg(long, env = "MONGODB_DATABASE", default_value = "realtime")]
        mongodb_database: String,
    },
    /// Print a token for one user.
    Token {
        #[arg(long, default_value = "demo")]
        tenant: String,
        #[arg(long)]
        user: String,
        /// Roles claim, comma-separated.
        #[arg(long, value_delimiter = ',')]
        roles: Vec<String>,
    },
}

impl Cli {
    fn token(&self, tenant: &str, user: &str, roles: Vec<String>) -> anyhow::Result<String> {
        let secret = self
            .jwt_secret
            .as_deref()
            .ok_or_else(|| anyhow::anyhow!("set JWT_SECRET or --jwt-secret"))?;
        let exp = u64::try_from(now_ms() / 1000)? + self.ttl_seconds;
        let claims = Claims {
            sub: user.to_owned(),
            tenant_id: tenant.to_owned(),
            iss: self.jwt_issuer.clone(),
            aud: self.jwt_audience.clone().map(serde_json::Value::String),
            exp,
            nbf: None,
            roles,
        };
        Ok(mint(secret, &claims)?)
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match &cli.command {
        Command::Seed {
            tenant,
            conversation,
            users,
            mongodb_uri,
            mongodb_database,
        } => {
            for (field, v) in [("tenant", tenant), ("conversation", conversation)] {
                validate_id(field, v).map_err(|e| anyhow::anyhow!(e.message))?;
            }
            for u in users {
                validate_id("user", u).map_err(|e| anyhow::anyhow!(e.message))?;
            }
            let store = Store::connect(
                mongodb_uri,
                mongodb_database,
                "majority",
                std::time::Duration::from_secs(10),
            )
            .await?;
            let participants: Vec<_> = users
                .iter()
                .enumerate()
                .map(|(i, u)| doc! {"user_id": u, "role": if i == 0 { "owner" } else { "member" }})
                .collect();
            store
                .database()
                .collection::<mongodb::bson::Document>(CONVERSATIONS)
                .replace_one(
                    doc! {"tenant_id": tenant, "conversation_id": conversation},
                    doc! {"tenant_id": tenant, "conversation_id": conversation, "participants": participants},
                )
                .upsert(true)
                .await?;
            println!(
                "conversation {tenant}/{conversation} with {}",
                users.join(", ")
            );
            for u in users {
                println!(
                    "TOKEN_{}={}",
                    u.to_uppercase().replace(['.', '@', '+', '-'], "_"),
                    cli.token(tenant, u, vec![])?
                );
            }
        }
        Command::Token {
            tenant,
            user,
            roles,
        } => {
            println!("{}", cli.token(tenant, user, roles.clone())?);
        }
    }
    Ok(())
}
