//! The deployment walkthroughs (docs/deployment.md), the Dockerfile, .dockerignore and the example
//! files in config/ agree with each other and with lameduck itself.
//!
//! No container engine runs in this suite, so nothing here builds an image or starts a pod.
//! Instead each file is read and its numbers are handed to the real binary: the environment a
//! manifest gives the container, and the flags before its `--`, go to `lameduck --print-config`,
//! and what lameduck reports it will do (grace period, port, probe paths, drain budget) is
//! compared with what the platform was told (terminationGracePeriodSeconds, the probes' port and
//! paths, stop_grace_period, TimeoutStopSec, cerebrium.toml). The images the manifests name must be
//! the tags the Dockerfile's comments and the docs build, and the users they run as must match.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use support::TempDir;
use yaml_rust2::{Yaml, YamlLoader};

/// Where lameduck's binary goes in every image of the walkthroughs.
const INSTALLED: &str = "/usr/local/bin/lameduck";

/// The tag of the Dockerfile's example stage: `lameduck-example:<version in Cargo.toml>`.
fn example_image() -> String {
    format!("lameduck-example:{}", env!("CARGO_PKG_VERSION"))
}

/// The tag of the Dockerfile's binary-only stage.
fn binary_image() -> String {
    format!("lameduck:{}", env!("CARGO_PKG_VERSION"))
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(relative: &str) -> String {
    let path = repo().join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|err| panic!("read {}: {err}", path.display()))
}

// ---------------------------------------------------------------------------------------------
// lameduck --print-config

/// What `lameduck --print-config` reported: each key's value (as printed, quotes included) and
/// where it came from, and the shutdown budget line.
#[derive(Debug)]
struct Effective {
    values: BTreeMap<String, (String, String)>,
    budget: String,
}

impl Effective {
    fn value(&self, key: &str) -> &str {
        &self
            .values
            .get(key)
            .unwrap_or_else(|| panic!("no {key} in {self:?}"))
            .0
    }

    fn source(&self, key: &str) -> &str {
        &self
            .values
            .get(key)
            .unwrap_or_else(|| panic!("no {key} in {self:?}"))
            .1
    }

    fn duration(&self, key: &str) -> Duration {
        duration(self.value(key))
    }

    fn string(&self, key: &str) -> &str {
        let value = self.value(key);
        value
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .unwrap_or_else(|| panic!("{key} = {value} is not a string"))
    }

    fn number(&self, key: &str) -> u64 {
        let value = self.value(key);
        value
            .parse()
            .unwrap_or_else(|_| panic!("{key} = {value} is not a number"))
    }

    /// The longest the drain may last: `grace_period - child_stop_timeout - 1s` (docs/lifecycle.md).
    fn drain_budget(&self) -> Duration {
        self.duration("grace_period") - self.duration("child_stop_timeout") - Duration::from_secs(1)
    }

    /// "drain 49s + ..." in the budget line: the drain budget as lameduck prints it.
    fn printed_drain(&self) -> &str {
        let rest = self
            .budget
            .strip_prefix("drain ")
            .unwrap_or_else(|| panic!("no drain in {:?}", self.budget));
        rest.split(' ').next().unwrap_or(rest)
    }
}

/// A duration as --print-config and the example files write it: `"60s"`, `60s` or `900`.
fn duration(value: &str) -> Duration {
    let value = value.trim_matches('"');
    match value.parse::<u64>() {
        Ok(seconds) => Duration::from_secs(seconds),
        Err(_) => humantime::parse_duration(value)
            .unwrap_or_else(|err| panic!("duration {value:?}: {err}")),
    }
}

/// Runs `lameduck ARGS --print-config` in `dir` with exactly `env` (nothing inherited, so neither
/// the developer's LAMEDUCK_* variables nor RUST_LOG can change the answer), as the container's
/// main process would see it.
fn print_config(dir: &Path, env: &[(String, String)], args: &[String]) -> Effective {
    let output = Command::new(env!("CARGO_BIN_EXE_lameduck"))
        .current_dir(dir)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .args(args)
        .arg("--print-config")
        .output()
        .expect("run lameduck --print-config");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "lameduck {args:?} --print-config with {env:?} in {}: {}\n{stdout}{}",
        dir.display(),
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let mut values = BTreeMap::new();
    let mut budget = String::new();
    for line in stdout.lines() {
        if let Some(rest) = line.strip_prefix("# shutdown budget: ") {
            budget = rest.to_string();
        } else if let Some((key, rest)) = line.split_once(" = ") {
            let (value, source) = rest.split_once('#').unwrap_or((rest, ""));
            values.insert(
                key.trim().to_string(),
                (value.trim().to_string(), source.trim().to_string()),
            );
        }
    }
    assert!(!budget.is_empty(), "no shutdown budget in:\n{stdout}");
    Effective { values, budget }
}

/// `--print-config` in a fresh empty directory, so no stray ./cerebrium.toml is read.
fn print_config_isolated(env: &[(String, String)], args: &[String]) -> Effective {
    let dir = TempDir::new("deployment");
    print_config(dir.path(), env, args)
}

/// The flags of a lameduck command line (the words between the binary and `--`) and the backend
/// command after `--`.
fn split_command(words: &[String]) -> (Vec<String>, Vec<String>) {
    assert!(
        words
            .first()
            .is_some_and(|w| w == INSTALLED || w == "lameduck"),
        "not a lameduck command line: {words:?}"
    );
    let dash = words
        .iter()
        .position(|w| w == "--")
        .unwrap_or_else(|| panic!("no `--` before the backend in {words:?}"));
    (words[1..dash].to_vec(), words[dash + 1..].to_vec())
}

/// The port a backend command line is told to listen on, and the address: `--port 8080`,
/// `--bind 127.0.0.1:8080`, `http.server 8080 --bind 127.0.0.1`, ...
fn backend_listens_on(backend: &[String], upstream: &str) {
    let (host, port) = upstream
        .strip_prefix("http://")
        .and_then(|hp| hp.rsplit_once(':'))
        .unwrap_or_else(|| panic!("upstream {upstream}"));
    assert!(
        backend
            .iter()
            .any(|w| w == port || w.ends_with(&format!(":{port}"))),
        "the backend {backend:?} is not told to listen on the upstream's port {port}"
    );
    assert!(
        backend.iter().any(|w| w == host || w.contains(&format!("{host}:"))),
        "the backend {backend:?} does not listen on {host} only: it would be reachable around lameduck"
    );
}

// ---------------------------------------------------------------------------------------------
// Dockerfile

/// One stage of a Dockerfile: `FROM base AS name`, then its instructions (keyword, arguments),
/// with continuation lines joined and comments dropped.
#[derive(Debug)]
struct Stage {
    base: String,
    name: Option<String>,
    instructions: Vec<(String, String)>,
}

impl Stage {
    fn all(&self, keyword: &str) -> Vec<&str> {
        self.instructions
            .iter()
            .filter(|(k, _)| k == keyword)
            .map(|(_, args)| args.as_str())
            .collect()
    }

    /// The stage's one `keyword` instruction (the last one, as Docker takes it).
    fn last(&self, keyword: &str) -> &str {
        self.all(keyword)
            .pop()
            .unwrap_or_else(|| panic!("no {keyword} in stage {:?}", self.name))
    }

    fn env(&self) -> Vec<(String, String)> {
        self.all("ENV")
            .iter()
            .flat_map(|args| args.split_whitespace())
            .map(|pair| {
                let (k, v) = pair.split_once('=').unwrap_or_else(|| panic!("ENV {pair}"));
                (k.to_string(), v.to_string())
            })
            .collect()
    }

    /// `USER uid:gid`, numeric.
    fn user(&self) -> (u32, u32) {
        let user = self.last("USER");
        let (uid, gid) = user.split_once(':').unwrap_or((user, user));
        let parse = |id: &str| -> u32 {
            id.parse().unwrap_or_else(|_| {
                panic!("USER {user} is not numeric: runAsNonRoot cannot check it")
            })
        };
        (parse(uid), parse(gid))
    }

    /// The sources and destination of each COPY, and its `--from` if any.
    fn copies(&self) -> Vec<(Option<String>, Vec<String>, String)> {
        self.all("COPY")
            .iter()
            .map(|args| {
                let mut from = None;
                let mut paths = Vec::new();
                for word in args.split_whitespace() {
                    if let Some(stage) = word.strip_prefix("--from=") {
                        from = Some(stage.to_string());
                    } else if !word.starts_with("--") {
                        paths.push(word.to_string());
                    }
                }
                let dest = paths.pop().expect("COPY without destination");
                (from, paths, dest)
            })
            .collect()
    }
}

fn dockerfile(relative: &str) -> Vec<Stage> {
    let text = read(relative);
    let mut logical = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && current.is_empty()) {
            continue;
        }
        match trimmed.strip_suffix('\\') {
            Some(part) => {
                current.push_str(part);
                current.push(' ');
            }
            None => {
                current.push_str(trimmed);
                logical.push(std::mem::take(&mut current));
            }
        }
    }
    let mut stages: Vec<Stage> = Vec::new();
    for line in logical {
        let (keyword, args) = line.split_once(char::is_whitespace).unwrap_or((&line, ""));
        let keyword = keyword.to_ascii_uppercase();
        let args = args.trim().to_string();
        if keyword == "FROM" {
            let words: Vec<&str> = args.split_whitespace().collect();
            let name = match words.as_slice() {
                [_, as_, name] if as_.eq_ignore_ascii_case("as") => Some(name.to_string()),
                [_] => None,
                _ => panic!("FROM {args}"),
            };
            stages.push(Stage {
                base: words[0].to_string(),
                name,
                instructions: Vec::new(),
            });
        } else if let Some(stage) = stages.last_mut() {
            stage.instructions.push((keyword, args));
        } else {
            assert_eq!(keyword, "ARG", "only ARG may come before the first FROM");
        }
    }
    stages
}

fn stage<'a>(stages: &'a [Stage], name: &str) -> &'a Stage {
    stages
        .iter()
        .find(|s| s.name.as_deref() == Some(name))
        .unwrap_or_else(|| panic!("no stage {name}"))
}

/// An exec-form instruction's words (`["a", "b"]`); shell form fails the test.
fn exec_form(args: &str) -> Vec<String> {
    serde_json::from_str(args)
        .unwrap_or_else(|err| panic!("{args} is not exec form (a JSON array): {err}"))
}

#[test]
fn dockerfile_builds_a_static_binary_from_manifests_then_src_only() {
    let stages = dockerfile("Dockerfile");
    let names: Vec<_> = stages
        .iter()
        .map(|s| s.name.as_deref().unwrap_or(""))
        .collect();
    // The example is last, so it is what a plain `docker build .` produces.
    assert_eq!(names, ["build", "lameduck", "example"]);

    let build = stage(&stages, "build");
    let copies = build.copies();
    let sources: Vec<Vec<String>> = copies.iter().map(|(_, s, _)| s.clone()).collect();
    // Manifests first, then src: the dependency layer is cached across source edits, and
    // tests/ (and anything else) never enters the build.
    assert_eq!(
        sources,
        [
            vec!["Cargo.toml".to_string(), "Cargo.lock".to_string()],
            vec!["src".to_string()]
        ]
    );
    let steps: Vec<&(String, String)> = build
        .instructions
        .iter()
        .filter(|(k, _)| k == "COPY" || k == "RUN")
        .collect();
    let [(_, _), (run_deps_kw, run_deps), (_, _), (run_kw, run)] = steps.as_slice() else {
        panic!("the build stage should be COPY manifests, RUN, COPY src, RUN: {steps:?}");
    };
    assert_eq!((run_deps_kw.as_str(), run_kw.as_str()), ("RUN", "RUN"));
    for command in [run_deps, run] {
        for part in [
            "RUSTFLAGS='-C target-feature=+crt-static' cargo build --release --locked",
            "--target \"$(uname -m)-unknown-linux-gnu\" --bin lameduck",
        ] {
            assert!(command.contains(part), "{command:?} lacks {part:?}");
        }
    }
    assert!(
        run_deps.contains("echo 'fn main() {}' > src/main.rs") && run_deps.contains("src/lib.rs")
    );
    assert!(
        run.contains("touch src/main.rs src/lib.rs"),
        "COPY keeps old mtimes: {run}"
    );
    assert!(run.contains("cp \"target/$(uname -m)-unknown-linux-gnu/release/lameduck\" /lameduck"));

    // The binary-only stage: scratch, holding /lameduck and nothing else.
    let binary = stage(&stages, "lameduck");
    assert_eq!(binary.base, "scratch");
    assert_eq!(
        binary.copies(),
        [(
            Some("build".to_string()),
            vec!["/lameduck".to_string()],
            "/lameduck".to_string()
        )]
    );

    // The example copies it exactly as users are told to, from the stage instead of the tag.
    let example = stage(&stages, "example");
    assert_eq!(
        example.copies(),
        [(
            Some("lameduck".to_string()),
            vec!["/lameduck".to_string()],
            INSTALLED.to_string()
        )]
    );
}

#[test]
fn dockerignore_lets_in_exactly_what_the_dockerfile_copies() {
    let ignore = read(".dockerignore");
    let patterns: Vec<&str> = ignore
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    assert_eq!(patterns.first(), Some(&"*"), "exclude everything first");
    let let_in: BTreeSet<String> = patterns[1..]
        .iter()
        .map(|p| {
            let p = p
                .strip_prefix('!')
                .unwrap_or_else(|| panic!("{p}: only `!` re-includes after `*`"));
            p.trim_end_matches('/').to_string()
        })
        .collect();
    let copied: BTreeSet<String> = dockerfile("Dockerfile")
        .iter()
        .flat_map(|s| s.copies())
        .filter(|(from, _, _)| from.is_none())
        .flat_map(|(_, sources, _)| sources)
        .collect();
    assert_eq!(let_in, copied);
    for never in ["tests", "target", ".git", "bench", "docs", "config"] {
        assert!(
            !let_in.contains(never),
            "{never} must stay out of the build context"
        );
    }
}

#[test]
fn example_image_runs_lameduck_as_pid_1_non_root_with_a_healthcheck() {
    let stages = dockerfile("Dockerfile");
    let example = stage(&stages, "example");

    let (uid, gid) = example.user();
    assert!(uid != 0 && gid != 0, "USER {uid}:{gid} is root");
    assert_eq!(exec_form(example.last("ENTRYPOINT")), [INSTALLED, "--"]);
    let healthcheck = example.last("HEALTHCHECK");
    let (_, probe) = healthcheck
        .split_once("CMD ")
        .expect("HEALTHCHECK ... CMD [...]");
    assert_eq!(exec_form(probe), [INSTALLED, "probe"]);

    // The image's ENV is a configuration lameduck accepts, listening on the EXPOSEd port
    // (where `lameduck probe` also looks), in front of the CMD's port.
    let env = example.env();
    let effective = print_config_isolated(&env, &[]);
    assert_eq!(effective.source("port"), "env LAMEDUCK_PORT");
    assert_eq!(example.last("EXPOSE"), effective.value("port"));
    assert_eq!(
        effective.source("grace_period"),
        "env LAMEDUCK_GRACE_PERIOD"
    );
    backend_listens_on(
        &exec_form(example.last("CMD")),
        effective.string("upstream"),
    );
}

// ---------------------------------------------------------------------------------------------
// Kubernetes

fn yaml_documents(relative: &str) -> Vec<Yaml> {
    YamlLoader::load_from_str(&read(relative)).unwrap_or_else(|err| panic!("{relative}: {err}"))
}

fn yaml_str<'a>(node: &'a Yaml, what: &str) -> &'a str {
    node.as_str()
        .unwrap_or_else(|| panic!("{what} is not a string: {node:?}"))
}

fn yaml_strings(node: &Yaml, what: &str) -> Vec<String> {
    node.as_vec()
        .unwrap_or_else(|| panic!("{what} is not a list: {node:?}"))
        .iter()
        .map(|w| yaml_str(w, what).to_string())
        .collect()
}

#[test]
fn kubernetes_manifest_agrees_with_lameduck_and_the_image() {
    let docs = yaml_documents("config/kubernetes.yaml");
    let deployment = docs
        .iter()
        .find(|d| d["kind"].as_str() == Some("Deployment"))
        .expect("a Deployment");
    let service = docs
        .iter()
        .find(|d| d["kind"].as_str() == Some("Service"))
        .expect("a Service");
    let pod = &deployment["spec"]["template"]["spec"];
    let containers = pod["containers"].as_vec().expect("containers");
    assert_eq!(containers.len(), 1);
    let container = &containers[0];

    // The image is the Dockerfile's example stage, whose ENTRYPOINT is lameduck: so no
    // `command` (it would replace lameduck), and `args` (the backend) must exist in that image,
    // which has only Python: its own CMD.
    let stages = dockerfile("Dockerfile");
    let example = stage(&stages, "example");
    assert_eq!(yaml_str(&container["image"], "image"), example_image());
    assert!(
        container["command"].is_badvalue(),
        "`command` would bypass lameduck"
    );
    let args = yaml_strings(&container["args"], "args");
    assert_eq!(args, exec_form(example.last("CMD")));

    // What lameduck will do in this container.
    let env: Vec<(String, String)> = container["env"]
        .as_vec()
        .expect("env")
        .iter()
        .map(|e| {
            (
                yaml_str(&e["name"], "env name").into(),
                yaml_str(&e["value"], "env value").into(),
            )
        })
        .collect();
    let effective = print_config_isolated(&env, &[]);
    backend_listens_on(&args, effective.string("upstream"));

    // terminationGracePeriodSeconds is lameduck's grace period.
    let termination = pod["terminationGracePeriodSeconds"]
        .as_i64()
        .expect("terminationGracePeriodSeconds") as u64;
    assert_eq!(
        effective.source("grace_period"),
        "env LAMEDUCK_GRACE_PERIOD"
    );
    assert_eq!(
        effective.duration("grace_period"),
        Duration::from_secs(termination)
    );

    // A drain delay covers the endpoint-removal race, and fits well inside the drain budget.
    let delay = effective.duration("drain_delay");
    assert!(
        delay > Duration::ZERO,
        "no --drain-delay for endpoint propagation"
    );
    assert!(
        delay < effective.drain_budget(),
        "drain delay {delay:?} >= budget"
    );

    // No preStop hook: the drain delay replaces it, inside the grace period.
    assert!(
        container["lifecycle"]["preStop"].is_badvalue(),
        "preStop is not needed"
    );

    // Probes: the named port, which is the one lameduck listens on; readiness on lameduck's
    // ready path, liveness on its health path.
    let ports = container["ports"].as_vec().expect("ports");
    let named = ports
        .iter()
        .find(|p| {
            p["containerPort"]
                .as_i64()
                .map(|n| n.to_string())
                .as_deref()
                == Some(effective.value("port"))
        })
        .unwrap_or_else(|| panic!("no containerPort {}", effective.value("port")));
    let port_name = yaml_str(&named["name"], "port name");
    for (probe, path_key) in [
        ("readinessProbe", "ready_path"),
        ("livenessProbe", "health_path"),
    ] {
        let get = &container[probe]["httpGet"];
        assert_eq!(yaml_str(&get["port"], probe), port_name, "{probe} port");
        assert_eq!(
            yaml_str(&get["path"], probe),
            effective.string(path_key),
            "{probe} path"
        );
    }
    assert_eq!(effective.string("ready_path"), "/ready");
    assert_eq!(effective.string("health_path"), "/health");

    // The Service sends traffic to the same named port.
    let service_ports = service["spec"]["ports"].as_vec().expect("Service ports");
    assert!(service_ports
        .iter()
        .all(|p| p["targetPort"].as_str() == Some(port_name)));
    assert_eq!(
        service["spec"]["selector"],
        deployment["spec"]["template"]["metadata"]["labels"]
    );

    // Non-root, as the same numeric user as the Dockerfile.
    let (uid, gid) = example.user();
    let security = &pod["securityContext"];
    assert_eq!(security["runAsNonRoot"].as_bool(), Some(true));
    assert_eq!(security["runAsUser"].as_i64(), Some(i64::from(uid)));
    assert_eq!(security["runAsGroup"].as_i64(), Some(i64::from(gid)));
}

#[test]
fn compose_stop_grace_period_is_lameducks_grace_period() {
    let docs = yaml_documents("config/compose.yaml");
    let services = docs[0]["services"].as_hash().expect("services");
    assert_eq!(services.len(), 1);
    let (_, app) = services.iter().next().expect("one service");

    assert_eq!(yaml_str(&app["image"], "image"), example_image());
    assert_eq!(yaml_str(&app["build"]["target"], "build target"), "example");
    let context = repo()
        .join("config")
        .join(yaml_str(&app["build"]["context"], "context"));
    assert_eq!(
        context.canonicalize().unwrap(),
        repo().canonicalize().unwrap()
    );
    assert!(
        app["init"].is_badvalue(),
        "lameduck is PID 1; no init needed"
    );

    let env: Vec<(String, String)> = app["environment"]
        .as_hash()
        .expect("environment as a map")
        .iter()
        .map(|(k, v)| (yaml_str(k, "env").into(), yaml_str(v, "env").into()))
        .collect();
    // The image's own ENV, then the file's environment over it.
    let mut all = stage(&dockerfile("Dockerfile"), "example").env();
    all.extend(env);
    let effective = print_config_isolated(&all, &[]);
    assert_eq!(
        duration(yaml_str(&app["stop_grace_period"], "stop_grace_period")),
        effective.duration("grace_period")
    );
    let ports = yaml_strings(&app["ports"], "ports");
    assert!(
        ports
            .iter()
            .any(|p| p.ends_with(&format!(":{}", effective.value("port")))),
        "{ports:?} do not publish lameduck's port"
    );
}

// ---------------------------------------------------------------------------------------------
// Cerebrium

#[test]
fn cerebrium_app_is_configured_by_its_own_cerebrium_toml() {
    let dir = repo().join("config/cerebrium");
    let toml: toml::Table = read("config/cerebrium/cerebrium.toml")
        .parse()
        .expect("cerebrium.toml");
    let custom = &toml["cerebrium"]["runtime"]["custom"];
    let scaling = &toml["cerebrium"]["scaling"];

    // lameduck started in the app's directory (the image's WORKDIR, holding cerebrium.toml),
    // with nothing else: every number comes from the file Cerebrium reads.
    let entrypoint: Vec<String> = custom["entrypoint"]
        .as_array()
        .expect("entrypoint")
        .iter()
        .map(|w| w.as_str().expect("entrypoint word").to_string())
        .collect();
    let (flags, backend) = split_command(&entrypoint);
    assert!(
        flags.is_empty(),
        "lameduck reads cerebrium.toml: no flags needed, got {flags:?}"
    );
    let effective = print_config(&dir, &[], &flags);

    assert_eq!(
        effective.number("port"),
        custom["port"].as_integer().unwrap() as u64
    );
    assert_eq!(effective.source("port"), "cerebrium.toml port");
    assert_eq!(
        effective.string("ready_path"),
        custom["readycheck_endpoint"].as_str().unwrap()
    );
    assert_eq!(
        effective.string("health_path"),
        custom["healthcheck_endpoint"].as_str().unwrap()
    );
    assert_eq!(
        effective.duration("grace_period"),
        Duration::from_secs(scaling["response_grace_period"].as_integer().unwrap() as u64)
    );
    assert_eq!(
        effective.source("grace_period"),
        "cerebrium.toml response_grace_period"
    );
    assert_eq!(
        effective.number("max_concurrency"),
        scaling["replica_concurrency"].as_integer().unwrap() as u64
    );
    backend_listens_on(&backend, effective.string("upstream"));

    // uvicorn's own graceful shutdown ends before lameduck would SIGKILL it.
    let graceful = backend
        .iter()
        .position(|w| w == "--timeout-graceful-shutdown")
        .map(|i| Duration::from_secs(backend[i + 1].parse().unwrap()))
        .expect("uvicorn --timeout-graceful-shutdown");
    assert!(graceful < effective.duration("child_stop_timeout"));

    // The Dockerfile it names runs the same command, from the directory holding cerebrium.toml,
    // as the same user as the repository's example image.
    let path = custom["dockerfile_path"].as_str().expect("dockerfile_path");
    let stages = dockerfile(&format!("config/cerebrium/{path}"));
    let [image] = stages.as_slice() else {
        panic!("one stage")
    };
    assert_eq!(exec_form(image.last("CMD")), entrypoint);
    assert!(
        image.all("ENTRYPOINT").is_empty(),
        "CMD alone starts the container"
    );
    assert_eq!(image.last("EXPOSE"), effective.value("port"));
    let workdir = image.last("WORKDIR");
    let copies = image.copies();
    assert!(copies.contains(&(None, vec!["lameduck".into()], INSTALLED.into())));
    assert!(copies.iter().any(|(_, sources, dest)| sources
        .contains(&"cerebrium.toml".to_string())
        && (dest == "./" || dest.trim_end_matches('/') == workdir)));
    for (_, sources, _) in &copies {
        for source in sources.iter().filter(|s| *s != "lameduck") {
            assert!(
                dir.join(source).is_file(),
                "config/cerebrium/{source} is missing"
            );
        }
    }
    assert_eq!(
        image.user(),
        stage(&dockerfile("Dockerfile"), "example").user()
    );
}

// ---------------------------------------------------------------------------------------------
// systemd, the config file

#[test]
fn systemd_unit_stops_within_the_grace_period_and_signals_lameduck_alone() {
    let unit = read("config/app.service");
    let setting = |key: &str| -> &str {
        unit.lines()
            .find_map(|l| l.strip_prefix(&format!("{key}=")))
            .unwrap_or_else(|| panic!("no {key}= in config/app.service"))
    };
    let exec: Vec<String> = setting("ExecStart")
        .split_whitespace()
        .map(String::from)
        .collect();
    let (flags, backend) = split_command(&exec);
    let effective = print_config_isolated(&[], &flags);
    assert_eq!(
        duration(setting("TimeoutStopSec")),
        effective.duration("grace_period")
    );
    assert_eq!(
        setting("KillMode"),
        "mixed",
        "control-group would SIGTERM the backend at once"
    );
    assert_eq!(setting("KillSignal"), "SIGTERM");
    backend_listens_on(&backend, effective.string("upstream"));
}

#[test]
fn example_config_file_is_accepted_whole() {
    let path = repo().join("config/lameduck.toml");
    let effective = print_config_isolated(&[], &["--config".into(), path.display().to_string()]);
    let file: toml::Table = read("config/lameduck.toml")
        .parse()
        .expect("config/lameduck.toml");
    assert!(file.len() >= 20, "the example sets (nearly) every option");
    for key in file.keys() {
        let source = effective.source(key);
        assert!(
            source.starts_with("config file "),
            "{key} came from {source}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// docs/deployment.md

/// Each fenced block preceded by `<!-- quoted from FILE -->` is a quotation: every line of it
/// (apart from `...`) is a line of FILE, so the walkthrough cannot drift from the file it shows.
#[test]
fn walkthrough_quotes_the_files_verbatim_and_names_the_built_images() {
    let doc = read("docs/deployment.md");
    let mut lines = doc.lines();
    let mut quotes = 0;
    while let Some(line) = lines.next() {
        let Some(file) = line
            .trim()
            .strip_prefix("<!-- quoted from ")
            .and_then(|rest| rest.strip_suffix(" -->"))
        else {
            continue;
        };
        let source = read(file);
        let source_lines: BTreeSet<&str> = source.lines().map(str::trim).collect();
        assert!(
            lines
                .next()
                .is_some_and(|l| l.trim_start().starts_with("```")),
            "a code block after {line}"
        );
        for quoted in lines
            .by_ref()
            .take_while(|l| !l.trim_start().starts_with("```"))
        {
            let quoted = quoted.trim();
            if quoted.is_empty() || quoted == "..." {
                continue;
            }
            assert!(
                source_lines.contains(quoted),
                "docs/deployment.md quotes {quoted:?}, which is not in {file}"
            );
        }
        quotes += 1;
    }
    assert!(quotes >= 4, "only {quotes} quotations found");

    // The build commands and the COPY line users write name the tags the manifests use, and so
    // does the Dockerfile's own header.
    let dockerfile = read("Dockerfile");
    for text in [&doc, &dockerfile] {
        for needle in [
            format!("docker build --target example -t {} .", example_image()),
            format!("docker build --target lameduck -t {} .", binary_image()),
            format!("COPY --from={} /lameduck {INSTALLED}", binary_image()),
        ] {
            assert!(text.contains(&needle), "missing {needle:?}");
        }
    }
}

/// The platform table: each row's flags are accepted, and the drain lameduck then plans is the
/// one the row states.
#[test]
fn platform_table_states_the_drain_lameduck_plans() {
    let doc = read("docs/deployment.md");
    let table: Vec<&str> = doc
        .lines()
        .skip_while(|l| !l.starts_with("| platform |"))
        .take_while(|l| l.starts_with('|'))
        .skip(2)
        .collect();
    assert!(table.len() >= 8, "platform table has {} rows", table.len());
    for row in table {
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        // | platform | window | set by | lameduck flags | drain up to |
        let flags = cells[4].trim_matches('`');
        let drain = cells[5];
        let args: Vec<String> = flags.split_whitespace().map(String::from).collect();
        let effective = print_config_isolated(&[], &args);
        assert_eq!(effective.printed_drain(), drain, "{row}");
    }
}
