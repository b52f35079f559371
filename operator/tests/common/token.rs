//! Identities other than the admin's: a ServiceAccount token from the TokenRequest API
//! (`serviceaccounts/token`; clusters since 1.24 create no token Secrets), as a client
//! or as a kubeconfig file for a child process.

use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::Client;
use kube::api::{Api, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};

use super::eventually;

/// A 10-minute token of ServiceAccount `ns/name`, once the ServiceAccount exists.
pub async fn service_account_token(admin: &Client, ns: &str, name: &str) -> String {
    let api: Api<ServiceAccount> = Api::namespaced(admin.clone(), ns);
    eventually(&format!("ServiceAccount {ns}/{name}"), 30, || async {
        api.get_opt(name).await.unwrap()
    })
    .await;
    let request = TokenRequest {
        spec: TokenRequestSpec {
            audiences: Vec::new(),
            expiration_seconds: Some(600),
            ..TokenRequestSpec::default()
        },
        ..TokenRequest::default()
    };
    api.create_token_request(name, &PostParams::default(), &request)
        .await
        .unwrap_or_else(|e| panic!("TokenRequest for {ns}/{name}: {e}"))
        .status
        .expect("a TokenRequest answer carries the token")
        .token
}

/// The test kubeconfig (KUBECONFIG) with every user's credentials replaced by `token`.
pub fn kubeconfig_with_token(token: &str) -> Kubeconfig {
    let mut kubeconfig = Kubeconfig::read_from(std::env::var("KUBECONFIG").unwrap()).unwrap();
    for user in &mut kubeconfig.auth_infos {
        if let Some(auth) = user.auth_info.as_mut() {
            auth.token = Some(token.to_owned().into());
        }
    }
    kubeconfig
}

/// A client that authenticates with `token`.
pub async fn client_with_token(token: &str) -> Client {
    let config = kube::Config::from_custom_kubeconfig(
        kubeconfig_with_token(token),
        &KubeConfigOptions::default(),
    )
    .await
    .unwrap();
    Client::try_from(config).unwrap()
}

/// Writes a kubeconfig that authenticates with `token` for a child process; returns its
/// path.
pub fn kubeconfig_file(token: &str, label: &str) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!(
        "realtime-operator-test-{label}-{}.kubeconfig",
        std::process::id()
    ));
    std::fs::write(
        &path,
        serde_norway::to_string(&kubeconfig_with_token(token)).unwrap(),
    )
    .unwrap();
    path
}

/// Writes `kubeconfig` (any server) to a file for a child process; returns its path.
pub fn write_kubeconfig(kubeconfig: &Kubeconfig, label: &str) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!(
        "realtime-operator-test-{label}-{}.kubeconfig",
        std::process::id()
    ));
    std::fs::write(&path, serde_norway::to_string(kubeconfig).unwrap()).unwrap();
    path
}
