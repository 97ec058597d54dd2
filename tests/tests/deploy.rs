//! deploy/: every YAML and JSON file parses, and the compose file,
//! Kubernetes manifests, alert rules, dashboard and example configuration
//! hold together (images that exist, files that exist, runbooks that
//! resolve, metric names giftxd exports, settings giftxd accepts).
//!
//! `promtool` checks the rules too when it is installed (Debian package
//! `prometheus`); `deploy/check.sh` installs it and runs the Kubernetes
//! schema check.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize as _;
use serde_json::Value as Json;
use serde_yaml_ng::Value as Yaml;

/// Images the compose file may use: real, pinned tags.
const KNOWN_IMAGES: &[&str] = &[
    "redis:7.2",
    "debian:bookworm-slim",
    "otel/opentelemetry-collector-contrib:0.111.0",
    "jaegertracing/all-in-one:1.62.0",
    "prom/prometheus:v2.54.1",
    "grafana/grafana:11.2.0",
    // Built from the root Dockerfile.
    "giftx/giftxd:dev",
];

/// Every metric giftxd exports (histograms by base name).
const METRICS: &[&str] = &[
    "giftx_rpc_requests_total",
    "giftx_rpc_duration_seconds",
    "giftx_exchanges_total",
    "giftx_provider_calls_total",
    "giftx_provider_call_duration_seconds",
    "giftx_exchanges_pending",
    "giftx_exchanges_parked",
    "giftx_stock_available",
    "giftx_codes",
    "giftx_sweeper_expired_total",
    "giftx_sweeper_last_success_timestamp_seconds",
    "giftx_reconciler_redrives_total",
    "giftx_lease_held",
    "giftx_ledger_script_duration_seconds",
    "giftx_ledger_script_errors_total",
];

const HISTOGRAMS: &[&str] = &[
    "giftx_rpc_duration_seconds",
    "giftx_provider_call_duration_seconds",
    "giftx_ledger_script_duration_seconds",
];

/// Status codes that are normal traffic and must never alert.
const CLIENT_CODES: &[&str] = &[
    "NOT_FOUND",
    "FAILED_PRECONDITION",
    "INVALID_ARGUMENT",
    "ABORTED",
    "ALREADY_EXISTS",
];

/// Variables giftxd reads (giftx_server::config), plus the OpenTelemetry
/// SDK's standard ones.
const KNOWN_ENV: &[&str] = &[
    "GIFTX_LISTEN",
    "GIFTX_REDIS_URL",
    "GIFTX_METRICS_LISTEN",
    "GIFTX_SERVICES",
    "GIFTX_HMAC_KEY_FILE",
    "GIFTX_DELIVERABLE_KEYS_FILE",
    "GIFTX_LOG_FORMAT",
    "GIFTX_LOG",
    "GIFTX_LOCKOUT_THRESHOLD",
    "GIFTX_LOCKOUT_SECONDS",
    "GIFTX_RETENTION_DAYS",
    "GIFTX_BATCH_STALL_SECONDS",
    "GIFTX_ISSUE_CHUNK_SIZE",
    "GIFTX_SEED_DEMO",
    "GIFTX_SHUTDOWN_DRAIN_SECONDS",
    "GIFTX_SHUTDOWN_GRACE_SECONDS",
    "GIFTX_MAX_ISSUE_STREAMS",
    "GIFTX_ISSUE_WINDOW_CHUNKS",
    "GIFTX_MAX_CONNECTIONS",
    "GIFTX_MAX_STREAMS_PER_CONNECTION",
    "GIFTX_IDLE_TIMEOUT_SECONDS",
    "GIFTX_KEEPALIVE_INTERVAL_SECONDS",
    "GIFTX_KEEPALIVE_TIMEOUT_SECONDS",
    "GIFTX_HEALTH_LISTEN",
    "GIFTX_TLS_CERT_FILE",
    "GIFTX_TLS_KEY_FILE",
    "GIFTX_TLS_CLIENT_CA_FILE",
    "GIFTX_ADMIN_TOKEN_FILE",
    "GIFTX_ADMIN_TENANT",
    "GIFTX_LIMIT_PORTAL_RPS",
    "GIFTX_LIMIT_OPERATOR_RPS",
    "GIFTX_END_USER_MAX_FAILURES",
    "RUST_LOG",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_SERVICE_NAME",
];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_owned()
}

fn deploy() -> PathBuf {
    root().join("deploy")
}

fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            files_under(&p, out);
        } else {
            out.push(p);
        }
    }
}

fn ext(p: &Path) -> &str {
    p.extension().and_then(|e| e.to_str()).unwrap_or("")
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Every document of a (possibly multi-document) YAML file.
fn yaml_docs(p: &Path) -> Vec<Yaml> {
    let text = read(p);
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|d| Yaml::deserialize(d).unwrap_or_else(|e| panic!("{}: {e}", p.display())))
        .filter(|v| !v.is_null())
        .collect()
}

fn yaml(p: &Path) -> Yaml {
    let mut docs = yaml_docs(p);
    assert_eq!(docs.len(), 1, "{}: expected one document", p.display());
    docs.remove(0)
}

fn json(p: &Path) -> Json {
    serde_json::from_str(&read(p)).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn s<'a>(v: &'a Yaml, key: &str) -> &'a str {
    v.get(key)
        .and_then(Yaml::as_str)
        .unwrap_or_else(|| panic!("missing string {key:?} in {v:?}"))
}

fn map_keys(v: &Yaml) -> BTreeSet<String> {
    v.as_mapping()
        .map(|m| {
            m.keys()
                .filter_map(|k| k.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Metric names (`giftx_…`) mentioned in a PromQL expression, histogram
/// series suffixes removed.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while let Some(pos) = expr[i..].find("giftx_") {
        let start = i + pos;
        let preceded_by_ident =
            start > 0 && (bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        let mut end = start;
        while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
            end += 1;
        }
        if !preceded_by_ident {
            let mut name = &expr[start..end];
            for h in HISTOGRAMS {
                for suffix in ["_bucket", "_sum", "_count"] {
                    if name.strip_suffix(suffix) == Some(h) {
                        name = h;
                    }
                }
            }
            out.insert(name.to_owned());
        }
        i = end;
    }
    out
}

/// GitHub's heading anchor: lower case, spaces to hyphens, punctuation out.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

fn operating_anchors() -> BTreeSet<String> {
    read(&root().join("docs/OPERATING.md"))
        .lines()
        .filter(|l| l.starts_with('#'))
        .map(|l| anchor(l.trim_start_matches('#')))
        .collect()
}

#[test]
fn every_yaml_and_json_file_under_deploy_parses() {
    let mut files = Vec::new();
    files_under(&deploy(), &mut files);
    let mut parsed = 0;
    for f in &files {
        match ext(f) {
            "yaml" | "yml" => {
                assert!(!yaml_docs(f).is_empty(), "{}: no document", f.display());
                parsed += 1;
            }
            "json" => {
                json(f);
                parsed += 1;
            }
            _ => {}
        }
    }
    // compose, collector, 2 Grafana provisioning, 2 Prometheus + rule tests,
    // 12 Kubernetes files, the dashboard.
    assert!(
        parsed >= 20,
        "only {parsed} YAML/JSON files found under deploy/"
    );
}

#[test]
fn compose_uses_known_images_and_existing_files() {
    let dir = deploy().join("compose");
    let compose = yaml(&dir.join("compose.yaml"));
    let top: BTreeSet<_> = map_keys(&compose);
    let allowed_top: BTreeSet<String> = [
        "name", "services", "volumes", "networks", "secrets", "configs",
    ]
    .map(String::from)
    .into();
    assert!(
        top.is_subset(&allowed_top),
        "unknown top-level keys: {top:?}"
    );

    let allowed_service_keys: BTreeSet<String> = [
        "image",
        "build",
        "command",
        "entrypoint",
        "environment",
        "volumes",
        "ports",
        "depends_on",
        "healthcheck",
        "restart",
        "read_only",
        "tmpfs",
        "user",
        "expose",
        "env_file",
        "working_dir",
        "networks",
        "secrets",
        "configs",
    ]
    .map(String::from)
    .into();
    let services = compose
        .get("services")
        .and_then(Yaml::as_mapping)
        .expect("services");
    let names: BTreeSet<String> = map_keys(compose.get("services").expect("services"));
    for expected in [
        "redis",
        "giftxd",
        "otel-collector",
        "jaeger",
        "prometheus",
        "grafana",
    ] {
        assert!(names.contains(expected), "compose lacks service {expected}");
    }
    let volumes = map_keys(compose.get("volumes").unwrap_or(&Yaml::Null));
    for (name, svc) in services {
        let name = name.as_str().expect("service name");
        let keys = map_keys(svc);
        assert!(
            keys.is_subset(&allowed_service_keys),
            "service {name}: unexpected keys {:?}",
            keys.difference(&allowed_service_keys).collect::<Vec<_>>()
        );
        let image = s(svc, "image");
        assert!(
            KNOWN_IMAGES.contains(&image),
            "service {name}: image {image} is not in the allow-list"
        );
        if let Some(build) = svc.get("build") {
            let ctx = dir.join(s(build, "context"));
            assert!(
                ctx.join(s(build, "dockerfile")).is_file(),
                "service {name}: Dockerfile missing"
            );
        }
        for m in svc
            .get("volumes")
            .and_then(Yaml::as_sequence)
            .into_iter()
            .flatten()
        {
            let spec = m.as_str().expect("short volume syntax");
            let source = spec.split(':').next().expect("source");
            if source.starts_with('.') {
                assert!(
                    dir.join(source).exists(),
                    "service {name}: {source} does not exist"
                );
            } else {
                assert!(
                    volumes.contains(source),
                    "service {name}: volume {source} not declared"
                );
            }
        }
        for dep in map_keys(svc.get("depends_on").unwrap_or(&Yaml::Null)) {
            assert!(
                names.contains(&dep),
                "service {name} depends on unknown {dep}"
            );
        }
        if let Some(env) = svc.get("environment").filter(|_| name == "giftxd") {
            for var in map_keys(env) {
                assert!(
                    KNOWN_ENV.contains(&var.as_str()),
                    "giftxd: unknown variable {var}"
                );
            }
        }
    }

    let redis_cmd: Vec<&str> = compose["services"]["redis"]["command"]
        .as_sequence()
        .expect("redis command")
        .iter()
        .map(|v| v.as_str().expect("string arg"))
        .collect();
    let joined = redis_cmd.join(" ");
    assert!(
        joined.contains("--appendonly yes"),
        "AOF must be on: {joined}"
    );
    assert!(
        joined.contains("--appendfsync always") || joined.contains("--appendfsync everysec"),
        "{joined}"
    );

    // Key material is generated at start, never committed.
    let mut secret_files = Vec::new();
    files_under(&dir.join("secrets"), &mut secret_files);
    for f in secret_files {
        let name = f.file_name().and_then(|n| n.to_str()).unwrap_or("");
        assert!(
            name == "README.md" || name == ".gitignore" || !tracked_by_git(&f),
            "{} looks like committed key material",
            f.display()
        );
    }
}

fn tracked_by_git(f: &Path) -> bool {
    Command::new("git")
        .arg("-C")
        .arg(root())
        .args(["ls-files", "--error-unmatch"])
        .arg(f)
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

#[test]
fn no_key_material_in_deploy_files() {
    let mut files = Vec::new();
    files_under(&deploy(), &mut files);
    let secrets = deploy().join("compose/secrets");
    for f in &files {
        // Keys generated locally by `keygen` live here, ignored by git.
        let name = f.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if f.starts_with(&secrets) && name != "README.md" && name != ".gitignore" {
            continue;
        }
        let text = read(f);
        for word in text.split(|c: char| !c.is_ascii_hexdigit()) {
            assert!(
                word.len() < 64,
                "{}: a 64-hex-digit string looks like a key",
                f.display()
            );
        }
    }
}

#[test]
fn compose_support_files_reference_what_exists() {
    let dir = deploy().join("compose");
    let otel = yaml(&dir.join("otel-collector/config.yaml"));
    let pipeline = &otel["service"]["pipelines"]["traces"];
    for section in ["receivers", "processors", "exporters"] {
        let defined = map_keys(&otel[section]);
        for item in pipeline[section].as_sequence().expect("pipeline list") {
            let item = item.as_str().expect("name");
            assert!(
                defined.contains(item),
                "collector pipeline uses undefined {section} {item}"
            );
        }
    }
    let ds = yaml(&dir.join("grafana/provisioning/datasources/prometheus.yaml"));
    assert_eq!(s(&ds["datasources"][0], "uid"), "prometheus");
    let prom = yaml(&deploy().join("prometheus/prometheus.yml"));
    for rule_file in prom["rule_files"].as_sequence().expect("rule_files") {
        let f = deploy()
            .join("prometheus")
            .join(rule_file.as_str().expect("path"));
        assert!(f.is_file(), "{} missing", f.display());
    }
}

#[test]
fn kustomization_lists_every_manifest_and_no_secret() {
    let dir = deploy().join("kubernetes");
    let k = yaml(&dir.join("kustomization.yaml"));
    assert_eq!(s(&k, "kind"), "Kustomization");
    let resources: BTreeSet<String> = k["resources"]
        .as_sequence()
        .expect("resources")
        .iter()
        .map(|r| r.as_str().expect("path").to_owned())
        .collect();
    for r in &resources {
        assert!(
            dir.join(r).is_file(),
            "kustomization resource {r} does not exist"
        );
    }
    let mut files = Vec::new();
    files_under(&dir, &mut files);
    assert!(
        files.iter().all(|f| f.parent() == Some(dir.as_path())),
        "the base holds no sub-directories (kustomize refuses an overlay nested in its base)"
    );
    for f in files.iter().filter(|f| ext(f) == "yaml") {
        let name = f
            .file_name()
            .and_then(|n| n.to_str())
            .expect("name")
            .to_owned();
        match name.as_str() {
            // kustomize's own file, not a Kubernetes object.
            "kustomization.yaml" => continue,
            "secret.example.yaml" => assert!(
                !resources.contains(&name),
                "the secret example must not be applied"
            ),
            _ => assert!(
                resources.contains(&name),
                "{name} is not listed in kustomization.yaml"
            ),
        }
        for doc in yaml_docs(f) {
            s(&doc, "apiVersion");
            s(&doc, "kind");
            s(&doc["metadata"], "name");
        }
    }
}

/// All objects of the kustomize base by (kind, name).
fn manifests() -> BTreeMap<(String, String), Yaml> {
    let dir = deploy().join("kubernetes");
    let k = yaml(&dir.join("kustomization.yaml"));
    let mut out = BTreeMap::new();
    for r in k["resources"].as_sequence().expect("resources") {
        for doc in yaml_docs(&dir.join(r.as_str().expect("path"))) {
            let key = (
                s(&doc, "kind").to_owned(),
                s(&doc["metadata"], "name").to_owned(),
            );
            assert!(out.insert(key.clone(), doc).is_none(), "duplicate {key:?}");
        }
    }
    out
}

fn labels_match(selector: &Yaml, labels: &Yaml) -> bool {
    selector
        .as_mapping()
        .expect("selector map")
        .iter()
        .all(|(k, v)| labels.get(k.as_str().expect("key")) == Some(v))
}

#[test]
fn kubernetes_workloads_are_probed_limited_and_hardened() {
    let m = manifests();
    let get = |kind: &str, name: &str| {
        m.get(&(kind.to_owned(), name.to_owned()))
            .unwrap_or_else(|| panic!("{kind}/{name} missing"))
    };
    let configmaps: BTreeSet<&str> = m
        .keys()
        .filter(|(k, _)| k == "ConfigMap")
        .map(|(_, n)| n.as_str())
        .collect();
    let env_cm = get("ConfigMap", "giftx-env");

    for (name, replicas, services, ready_service) in [
        ("giftxd-exchange", 3, "exchange", "giftx.v1.ExchangeService"),
        (
            "giftxd-ops",
            2,
            "issuance,expiry",
            "giftx.v1.IssuanceService",
        ),
    ] {
        let d = get("Deployment", name);
        assert_eq!(
            d["spec"]["replicas"].as_u64(),
            Some(replicas),
            "{name} replicas"
        );
        let selector = &d["spec"]["selector"]["matchLabels"];
        let tpl = &d["spec"]["template"];
        assert!(
            labels_match(selector, &tpl["metadata"]["labels"]),
            "{name}: selector does not match its pods"
        );
        let pod = &tpl["spec"];
        assert_eq!(
            pod["securityContext"]["runAsNonRoot"].as_bool(),
            Some(true),
            "{name}"
        );
        let c = &pod["containers"][0];
        assert_eq!(
            c["securityContext"]["readOnlyRootFilesystem"].as_bool(),
            Some(true),
            "{name}"
        );
        assert_eq!(
            c["securityContext"]["allowPrivilegeEscalation"].as_bool(),
            Some(false),
            "{name}"
        );
        for kind in ["requests", "limits"] {
            for res in ["cpu", "memory"] {
                assert!(
                    c["resources"][kind].get(res).is_some(),
                    "{name}: no {kind}.{res}"
                );
            }
        }
        // The listener speaks TLS, which Kubernetes' gRPC probes cannot:
        // they ask the plaintext health-only listener.
        for probe in ["livenessProbe", "readinessProbe"] {
            assert_eq!(
                c[probe]["grpc"]["port"].as_u64(),
                Some(50052),
                "{name}: {probe} is not a gRPC probe of the health listener"
            );
        }
        assert_eq!(
            c["readinessProbe"]["grpc"]["service"].as_str(),
            Some(ready_service),
            "{name}"
        );

        // The environment giftxd would see, less Secret-sourced values.
        let mut env: BTreeMap<String, String> = BTreeMap::new();
        for from in c["envFrom"].as_sequence().into_iter().flatten() {
            let cm = s(&from["configMapRef"], "name");
            assert_eq!(cm, "giftx-env", "{name}");
            for (k, v) in env_cm["data"].as_mapping().expect("data") {
                env.insert(
                    k.as_str().expect("key").into(),
                    v.as_str().expect("string value").into(),
                );
            }
        }
        for e in c["env"].as_sequence().expect("env") {
            let var = s(e, "name");
            if let Some(v) = e.get("value") {
                env.insert(var.into(), v.as_str().expect("string value").into());
            } else {
                let r = &e["valueFrom"]["secretKeyRef"];
                assert!(
                    r.get("name").is_some() && r.get("key").is_some(),
                    "{name}: {var} has no value"
                );
            }
        }
        for var in env.keys() {
            assert!(
                KNOWN_ENV.contains(&var.as_str()),
                "{name}: unknown variable {var}"
            );
        }
        assert_eq!(
            env.get("GIFTX_SERVICES").map(String::as_str),
            Some(services),
            "{name}"
        );
        assert!(
            c["env"]
                .as_sequence()
                .expect("env")
                .iter()
                .any(|e| s(e, "name") == "GIFTX_REDIS_URL"
                    && e["valueFrom"]["secretKeyRef"].get("name").is_some()),
            "{name}: GIFTX_REDIS_URL must come from a Secret"
        );
        for v in pod["volumes"].as_sequence().expect("volumes") {
            if let Some(cm) = v.get("configMap") {
                assert!(
                    configmaps.contains(s(cm, "name")),
                    "{name}: unknown ConfigMap"
                );
            }
        }

        // giftxd accepts the mounted file and this environment.
        let cfg = get("ConfigMap", "giftx-config");
        let file =
            std::env::temp_dir().join(format!("giftx-deploy-{name}-{}.toml", std::process::id()));
        std::fs::write(&file, s(&cfg["data"], "giftx.toml")).expect("write temp config");
        let loaded =
            giftx_server::Config::load_with_env(Some(&file), None, |k| env.get(k).cloned());
        std::fs::remove_file(&file).ok();
        let loaded =
            loaded.unwrap_or_else(|e| panic!("{name}: giftxd refuses its configuration: {e}"));
        assert_eq!(loaded.listen.to_string(), "0.0.0.0:50051", "{name}");
        // Secure: TLS and API keys, from Secrets; health for the probes.
        assert!(
            loaded.security.tls() && loaded.security.auth(),
            "{name}: TLS and auth"
        );
        assert_eq!(
            loaded.health_listen.map(|h| h.port()),
            Some(50052),
            "{name}"
        );
        for (var, secret) in [
            ("GIFTX_TLS_CERT_FILE", "giftx-tls"),
            ("GIFTX_ADMIN_TOKEN_FILE", "giftx-admin-token"),
        ] {
            let file = env.get(var).expect(var);
            let dir = file.rsplit_once('/').unwrap().0;
            let mount = c["volumeMounts"]
                .as_sequence()
                .unwrap()
                .iter()
                .find(|m| s(m, "mountPath") == dir)
                .unwrap_or_else(|| panic!("{name}: {dir} not mounted"));
            let vol = pod["volumes"]
                .as_sequence()
                .unwrap()
                .iter()
                .find(|v| s(v, "name") == s(mount, "name"))
                .unwrap();
            assert_eq!(s(&vol["secret"], "secretName"), secret, "{name}: {var}");
        }

        // Its Service, PDB (and HPA) select these pods.
        let svc = get("Service", name);
        assert!(
            labels_match(&svc["spec"]["selector"], &tpl["metadata"]["labels"]),
            "{name}: Service selects nothing"
        );
        let pdb = get("PodDisruptionBudget", name);
        assert!(
            labels_match(
                &pdb["spec"]["selector"]["matchLabels"],
                &tpl["metadata"]["labels"]
            ),
            "{name}: PDB"
        );
    }
    let hpa = get("HorizontalPodAutoscaler", "giftxd-exchange");
    assert_eq!(s(hpa, "apiVersion"), "autoscaling/v2");
    assert_eq!(s(&hpa["spec"]["scaleTargetRef"], "name"), "giftxd-exchange");
    assert!(hpa["spec"]["minReplicas"].as_u64() >= Some(3));
    assert_eq!(s(&hpa["spec"]["metrics"][0]["resource"], "name"), "cpu");
    assert_eq!(
        s(&get("Service", "giftxd-ops")["spec"], "type"),
        "ClusterIP"
    );
}

#[test]
fn example_configuration_is_accepted_by_giftxd_and_its_providers() {
    let path = deploy().join("config/giftx.example.toml");
    let text = read(&path);
    let config = giftx_server::Config::from_toml(&text)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    config.validate().expect("example configuration validates");
    assert!(
        !config.providers.is_empty(),
        "the example configures providers"
    );
    let table: toml::Table = toml::from_str(&text).expect("TOML");
    let providers = table["providers"].as_table().expect("[providers]");
    for (id, p) in providers {
        let parsed: Result<giftx_providers::ProviderConfig, _> = p.clone().try_into();
        assert!(
            parsed.is_ok(),
            "[providers.{id}]: {}",
            parsed.err().map(|e| e.to_string()).unwrap_or_default()
        );
    }
    // The compose stack's giftxd: the example file plus its environment.
    let compose = yaml(&deploy().join("compose/compose.yaml"));
    let env: BTreeMap<String, String> = compose["services"]["giftxd"]["environment"]
        .as_mapping()
        .expect("environment map")
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().expect("key").into(),
                v.as_str().expect("string value").into(),
            )
        })
        .collect();
    let c = giftx_server::Config::load_with_env(Some(&path), None, |k| env.get(k).cloned())
        .unwrap_or_else(|e| panic!("compose giftxd configuration: {e}"));
    assert!(!c.embedded_ledger(), "compose runs giftxd on Redis");
    assert!(c.metrics_listen.is_some());
    assert!(c.hmac_key_file.is_some());
}

fn alert_rules() -> Vec<Yaml> {
    let doc = yaml(&deploy().join("prometheus/alerts.yaml"));
    let mut rules = Vec::new();
    for group in doc["groups"].as_sequence().expect("groups") {
        s(group, "name");
        rules.extend(group["rules"].as_sequence().expect("rules").iter().cloned());
    }
    rules
}

#[test]
fn alert_rules_have_runbooks_and_ignore_client_codes() {
    let anchors = operating_anchors();
    let rules = alert_rules();
    assert!(rules.len() >= 10, "only {} rules", rules.len());
    let mut names = BTreeSet::new();
    for rule in &rules {
        let name = s(rule, "alert");
        assert!(names.insert(name.to_owned()), "alert {name} defined twice");
        let expr = s(rule, "expr");
        for code in CLIENT_CODES {
            assert!(
                !expr.contains(code),
                "{name} alerts on {code}, which is normal traffic"
            );
        }
        let severity = s(&rule["labels"], "severity");
        assert!(
            ["page", "ticket"].contains(&severity),
            "{name}: severity {severity}"
        );
        s(&rule["annotations"], "summary");
        assert!(
            rule["annotations"].get("runbook").is_none(),
            "{name}: the annotation is runbook_url (what Alertmanager and Grafana look for)"
        );
        let runbook = s(&rule["annotations"], "runbook_url");
        let (doc, frag) = runbook
            .split_once('#')
            .unwrap_or_else(|| panic!("{name}: runbook has no anchor"));
        assert_eq!(doc, "docs/OPERATING.md", "{name}");
        assert!(
            anchors.contains(frag),
            "{name}: docs/OPERATING.md has no heading for #{frag}"
        );
        assert_eq!(
            frag,
            anchor(name),
            "{name}: runbook anchor should be the alert's own section"
        );
    }
    let server_faults = rules
        .iter()
        .filter(|r| s(r, "expr").contains("giftx_rpc_requests_total"))
        .map(|r| s(r, "expr"))
        .collect::<Vec<_>>()
        .join("\n");
    for code in [
        "UNKNOWN",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
        "DEADLINE_EXCEEDED",
    ] {
        assert!(server_faults.contains(code), "no alert covers {code}");
    }
    for needed in [
        "giftx_rpc_duration_seconds",
        "giftx_exchanges_pending",
        "giftx_exchanges_parked",
        "giftx_stock_available",
        "giftx_lease_held",
        "giftx_sweeper_last_success_timestamp_seconds",
        "giftx_ledger_script_errors_total",
    ] {
        assert!(
            rules
                .iter()
                .any(|r| metric_names(s(r, "expr")).contains(needed)),
            "no alert watches {needed}"
        );
    }
}

fn dashboard_exprs(v: &Json, out: &mut Vec<String>) {
    match v {
        Json::Object(m) => {
            if let Some(Json::String(e)) = m.get("expr") {
                out.push(e.clone());
            }
            m.values().for_each(|c| dashboard_exprs(c, out));
        }
        Json::Array(a) => a.iter().for_each(|c| dashboard_exprs(c, out)),
        _ => {}
    }
}

#[test]
fn alerts_and_dashboard_use_only_exported_metric_names() {
    let mut exprs: Vec<String> = alert_rules()
        .iter()
        .map(|r| s(r, "expr").to_owned())
        .collect();
    let dash = json(&deploy().join("grafana/giftx-dashboard.json"));
    let mut dash_exprs = Vec::new();
    dashboard_exprs(&dash, &mut dash_exprs);
    assert!(
        dash_exprs.len() >= 15,
        "dashboard has only {} queries",
        dash_exprs.len()
    );
    let dash_metrics: BTreeSet<String> = dash_exprs.iter().flat_map(|e| metric_names(e)).collect();
    exprs.extend(dash_exprs);
    for e in &exprs {
        for name in metric_names(e) {
            assert!(
                METRICS.contains(&name.as_str()),
                "unknown metric {name} in {e}"
            );
        }
    }
    // The dashboard shows every metric.
    for m in METRICS {
        assert!(dash_metrics.contains(*m), "the dashboard does not show {m}");
    }
    // Panels have unique ids and every query names its data source.
    let mut ids = BTreeSet::new();
    for p in dash["panels"].as_array().expect("panels") {
        let id = p["id"].as_u64().expect("panel id");
        assert!(ids.insert(id), "panel id {id} twice");
        for t in p
            .get("targets")
            .and_then(Json::as_array)
            .into_iter()
            .flatten()
        {
            assert!(
                t.get("datasource").is_some(),
                "panel {id}: target without datasource"
            );
        }
    }
    assert!(dash["uid"].as_str().is_some_and(|u| !u.is_empty()));
}

#[test]
fn metric_name_scanner_finds_names_and_folds_histogram_series() {
    let names = metric_names(
        "histogram_quantile(0.99, sum by (le) (rate(giftx_rpc_duration_seconds_bucket[5m]))) / x_giftx_no + giftx_codes",
    );
    let expected: BTreeSet<String> = ["giftx_rpc_duration_seconds", "giftx_codes"]
        .map(String::from)
        .into();
    assert_eq!(names, expected);
    assert_eq!(anchor("GiftxNoLeaseHolder"), "giftxnoleaseholder");
    assert_eq!(
        anchor("Reconciliation and parked exchanges"),
        "reconciliation-and-parked-exchanges"
    );
}

/// Runs `promtool` when it is installed (`apt-get install prometheus`);
/// without it the structural checks above still hold.
#[test]
fn promtool_accepts_rules_config_and_rule_tests_when_installed() {
    let dir = deploy().join("prometheus");
    let Ok(version) = Command::new("promtool").arg("--version").output() else {
        eprintln!("promtool not installed: skipping (deploy/check.sh installs it)");
        return;
    };
    assert!(version.status.success());
    for args in [
        &["check", "rules", "alerts.yaml"][..],
        &["check", "config", "prometheus.yml"][..],
        &["test", "rules", "alerts.test.yaml"][..],
    ] {
        let out = Command::new("promtool")
            .args(args)
            .current_dir(&dir)
            .output()
            .expect("run promtool");
        assert!(
            out.status.success(),
            "promtool {}:\n{}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// The `giftx.toml` of a ConfigMap file (the first document named
/// `giftx-config`), checked by giftxd's own parser and every provider's.
fn configmap_giftx_toml(path: &Path) -> (giftx_server::Config, toml::Table) {
    let doc = yaml_docs(path)
        .into_iter()
        .find(|d| s(&d["metadata"], "name") == "giftx-config")
        .unwrap_or_else(|| panic!("{}: no giftx-config", path.display()));
    let text = s(&doc["data"], "giftx.toml").to_owned();
    let config = giftx_server::Config::from_toml(&text)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    config
        .validate()
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let table: toml::Table = toml::from_str(&text).expect("TOML");
    let providers = table
        .get("providers")
        .and_then(|p| p.as_table())
        .unwrap_or_else(|| panic!("{}: no [providers.*]", path.display()));
    assert!(!providers.is_empty());
    for (id, p) in providers {
        let parsed: Result<giftx_providers::ProviderConfig, _> = p.clone().try_into();
        assert!(
            parsed.is_ok(),
            "{}: [providers.{id}]: {:?}",
            path.display(),
            parsed.err()
        );
    }
    (config, table)
}

fn provider_kinds(table: &toml::Table) -> BTreeMap<String, (String, Option<String>)> {
    table["providers"]
        .as_table()
        .expect("[providers]")
        .iter()
        .map(|(id, p)| {
            let kind = p["kind"].as_str().expect("kind").to_owned();
            let campaign = p
                .get("campaign")
                .and_then(|c| c.as_str())
                .map(str::to_owned);
            (id.clone(), (kind, campaign))
        })
        .collect()
}

/// The campaigns giftxd seeds with GIFTX_SEED_DEMO.
const DEMO_CAMPAIGNS: &[&str] = &["demo-2014", "demo-select"];

#[test]
fn kubernetes_base_ships_no_simulator_and_no_demo_campaign() {
    let path = deploy().join("kubernetes/configmap.yaml");
    let (_, table) = configmap_giftx_toml(&path);
    for (id, (kind, campaign)) in provider_kinds(&table) {
        assert_ne!(kind, "simulated", "the base ships the simulator as {id}");
        if let Some(c) = campaign {
            assert!(
                !DEMO_CAMPAIGNS.contains(&c.as_str()),
                "the base points {id} at the demo campaign {c}"
            );
        }
    }
    let m = manifests();
    let env = &m[&("ConfigMap".to_owned(), "giftx-env".to_owned())]["data"];
    assert_eq!(s(env, "GIFTX_SEED_DEMO"), "false", "the base seeds no demo");
}

#[test]
fn demo_overlay_patches_the_base_and_is_clearly_the_demo() {
    let dir = deploy().join("kubernetes-demo");
    let k = yaml(&dir.join("kustomization.yaml"));
    assert_eq!(s(&k, "kind"), "Kustomization");
    let resources: Vec<&str> = k["resources"]
        .as_sequence()
        .expect("resources")
        .iter()
        .map(|r| r.as_str().expect("path"))
        .collect();
    assert_eq!(resources, ["../kubernetes"]);
    assert!(dir.join("../kubernetes/kustomization.yaml").is_file());
    let base = manifests();
    let mut patched = BTreeSet::new();
    for p in k["patches"].as_sequence().expect("patches") {
        let file = dir.join(s(p, "path"));
        assert!(file.is_file(), "patch {} does not exist", file.display());
        for doc in yaml_docs(&file) {
            let key = (
                s(&doc, "kind").to_owned(),
                s(&doc["metadata"], "name").to_owned(),
            );
            assert!(base.contains_key(&key), "{key:?} is not in the base");
            patched.insert(key.1);
        }
    }
    assert!(patched.contains("giftx-config") && patched.contains("giftx-env"));
    let (_, table) = configmap_giftx_toml(&dir.join("giftx-config-demo.yaml"));
    let kinds = provider_kinds(&table);
    assert!(kinds.values().any(|(kind, _)| kind == "simulated"));
    // A select option into a demo campaign needs that campaign seeded.
    for (id, (_, campaign)) in &kinds {
        if let Some(c) = campaign {
            assert!(DEMO_CAMPAIGNS.contains(&c.as_str()), "{id} -> {c}");
        }
    }
    let env = yaml(&dir.join("giftx-env-demo.yaml"));
    assert_eq!(s(&env["data"], "GIFTX_SEED_DEMO"), "true");
}

/// `kubectl kustomize` builds the base and the demo overlay, when kubectl
/// is installed.
#[test]
fn kustomize_builds_base_and_demo_overlay_when_installed() {
    if Command::new("kubectl")
        .arg("version")
        .arg("--client")
        .output()
        .is_err()
    {
        eprintln!("kubectl not installed: skipping");
        return;
    }
    for (dir, seed) in [("kubernetes", "\"false\""), ("kubernetes-demo", "\"true\"")] {
        let out = Command::new("kubectl")
            .args(["kustomize"])
            .arg(deploy().join(dir))
            .output()
            .expect("run kubectl");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "kubectl kustomize {dir}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            text.contains(&format!("GIFTX_SEED_DEMO: {seed}")),
            "{dir}: {text}"
        );
        assert_eq!(
            text.contains("kind = \"simulated\""),
            dir == "kubernetes-demo",
            "{dir}"
        );
    }
}

#[test]
fn alert_comments_match_the_code_lockout_is_failed_precondition() {
    // giftx_server::status maps a locked code to FAILED_PRECONDITION
    // (reason CODE_LOCKED); the rules' header must not say otherwise.
    let text = read(&deploy().join("prometheus/alerts.yaml"));
    let header: String = text
        .lines()
        .take_while(|l| l.starts_with('#'))
        .collect::<Vec<_>>()
        .join(" ");
    assert!(
        !header.contains("RESOURCE_EXHAUSTED from lockout"),
        "{header}"
    );
    let lock = header
        .find("locked out")
        .expect("the header explains lockout");
    let fp = header
        .find("FAILED_PRECONDITION")
        .expect("FAILED_PRECONDITION");
    assert!(fp < lock && lock - fp < 80, "{header}");
}

/// Every relative link (`[x](path)`) and every backquoted `deploy/…` path
/// in the README, ARCHITECTURE.md, docs/ and deploy/README.md exists.
#[test]
fn every_path_the_docs_name_exists() {
    let docs = [
        root().join("README.md"),
        root().join("ARCHITECTURE.md"),
        root().join("docs/OPERATING.md"),
        root().join("docs/design.md"),
        deploy().join("README.md"),
        deploy().join("compose/secrets/README.md"),
    ];
    let mut checked = 0;
    for doc in docs.iter().filter(|d| d.is_file()) {
        let text = read(doc);
        let base = doc.parent().expect("parent");
        let mut rest = text.as_str();
        while let Some(i) = rest.find("](") {
            rest = &rest[i + 2..];
            let end = rest.find(')').unwrap_or(rest.len());
            let target = rest[..end].split('#').next().unwrap_or_default();
            if target.is_empty() || target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            assert!(
                base.join(target).exists(),
                "{} links to {target}, which does not exist",
                doc.display()
            );
            checked += 1;
        }
        for part in text.split('`').skip(1).step_by(2) {
            let Some(path) = part.strip_prefix("deploy/") else {
                continue;
            };
            let path = path.split_whitespace().next().unwrap_or_default();
            // Generated at first start (see compose/secrets/README.md).
            if path.starts_with("compose/secrets/") && !path.ends_with("README.md") {
                continue;
            }
            assert!(
                deploy().join(path).exists(),
                "{} names deploy/{path}, which does not exist",
                doc.display()
            );
            checked += 1;
        }
    }
    assert!(checked > 10, "only {checked} paths checked");
}
