//! `tern.toml`: the serve settings as a file, below flags and environment.
//!
//! Every `tern serve` flag has a key in the section its `--help` heading
//! names (`[engine] max-running = 16`; `_` and `-` are the same) and a
//! `TERN_*` variable. Precedence: flag > environment > file > default. The
//! file is `--config FILE`, `TERN_CONFIG`, or `./tern.toml` when it exists.
//!
//! The file's settings become extra command-line arguments for the flags that
//! neither the command line nor the environment set, and clap parses
//! everything once more: one parser, one set of checks and error messages.

use anyhow::{bail, Context as _};
use clap::parser::ValueSource;
use clap::{ArgMatches, Command};
use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// The default file, read when it exists.
pub const DEFAULT_FILE: &str = "tern.toml";

/// Flags whose values are never printed.
const SECRETS: [&str; 5] = ["api-key", "admin-key", "jwt-secret", "database-url", "media-upstream-key"];

/// Parses `argv` with the file's settings added; returns the matches and the
/// ids of the arguments that came from the file.
pub fn parse(command: Command, argv: Vec<OsString>) -> anyhow::Result<(ArgMatches, Vec<String>)> {
    let first = command.clone().get_matches_from(argv.clone());
    let Some((name, sub)) = first.subcommand() else { return Ok((first, Vec::new())) };
    let Some(file) = config_file(sub) else { return Ok((first, Vec::new())) };
    let text = std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
    let table: toml::Table = text.parse().with_context(|| format!("parsing {}", file.display()))?;
    let spec = command.find_subcommand(name).context("subcommand")?.clone();
    let (extra, from_file) = file_arguments(&spec, sub, &table).with_context(|| format!("in {}", file.display()))?;
    if extra.is_empty() {
        return Ok((first, Vec::new()));
    }
    let mut argv = argv;
    argv.extend(extra);
    Ok((command.get_matches_from(argv), from_file))
}

fn config_file(sub: &ArgMatches) -> Option<PathBuf> {
    let given = sub.try_get_one::<PathBuf>("config").ok().flatten().cloned();
    given.or_else(|| Path::new(DEFAULT_FILE).exists().then(|| PathBuf::from(DEFAULT_FILE)))
}

/// The `--flag value` arguments for the file's settings that nothing
/// stronger set.
fn file_arguments(
    spec: &Command,
    matches: &ArgMatches,
    table: &toml::Table,
) -> anyhow::Result<(Vec<OsString>, Vec<String>)> {
    let mut argv = Vec::new();
    let mut ids = Vec::new();
    for (section, value) in table {
        let toml::Value::Table(keys) = value else {
            bail!("`{section}` must be a [section]; settings live in sections like [server]")
        };
        for (key, value) in keys {
            let long = key.replace('_', "-");
            let arg = spec
                .get_arguments()
                .find(|a| a.get_long() == Some(long.as_str()) && heading(a) == section.as_str())
                .with_context(|| format!("unknown setting [{section}] {key}; `tern config --print` lists them"))?;
            let id = arg.get_id().as_str();
            if matches!(matches.value_source(id), Some(ValueSource::CommandLine | ValueSource::EnvVariable)) {
                continue;
            }
            ids.push(id.to_string());
            let takes_value = arg.get_action().takes_values();
            let values: Vec<&toml::Value> = match value {
                toml::Value::Array(items) => items.iter().collect(),
                v => vec![v],
            };
            for v in values {
                match (takes_value, v) {
                    (false, toml::Value::Boolean(true)) => argv.push(format!("--{long}").into()),
                    (false, toml::Value::Boolean(false)) => {}
                    (false, _) => bail!("[{section}] {key} is a switch: true or false"),
                    (true, toml::Value::String(s)) => argv.extend([format!("--{long}").into(), s.into()]),
                    (true, toml::Value::Integer(_) | toml::Value::Float(_) | toml::Value::Boolean(_)) => {
                        argv.extend([format!("--{long}").into(), v.to_string().into()])
                    }
                    (true, _) => bail!("[{section}] {key} must be a string, number or list of them"),
                }
            }
        }
    }
    Ok((argv, ids))
}

fn heading(arg: &clap::Arg) -> String {
    arg.get_help_heading().unwrap_or("server").to_ascii_lowercase()
}

/// The effective settings as a `tern.toml`, each with where it came from;
/// secrets masked.
pub fn render(spec: &Command, matches: &ArgMatches, from_file: &[String]) -> String {
    let mut sections: Vec<(String, Vec<String>)> = Vec::new();
    for arg in spec.get_arguments() {
        let (Some(long), id) = (arg.get_long(), arg.get_id().as_str()) else { continue };
        if matches!(long, "help" | "version" | "print" | "config") {
            continue;
        }
        let values: Vec<String> =
            matches.get_raw(id).map(|vs| vs.map(|v| v.to_string_lossy().into_owned()).collect()).unwrap_or_default();
        let source = match matches.value_source(id) {
            _ if from_file.iter().any(|f| f == id) => "file".to_string(),
            Some(ValueSource::CommandLine) => "flag".to_string(),
            Some(ValueSource::EnvVariable) => {
                format!("env {}", arg.get_env().map(|e| e.to_string_lossy().into_owned()).unwrap_or_default())
            }
            _ => "default".to_string(),
        };
        // A store URL is a secret when it carries credentials (`redis://:pw@…`).
        let secret = SECRETS.contains(&long) || (long == "keyvalue" && values.iter().any(|v| v.contains('@')));
        let shown = if secret && !values.is_empty() {
            format!("\"***\" # {} key(s)", values.len())
        } else if !arg.get_action().takes_values() {
            (matches.get_flag(id)).to_string()
        } else {
            match values.as_slice() {
                [] => String::from("# unset"),
                [one] if !is_list(arg) => toml_value(one),
                many => format!("[{}]", many.iter().map(|v| toml_value(v)).collect::<Vec<_>>().join(", ")),
            }
        };
        let line = if shown.starts_with('#') {
            format!("# {long} = (unset)  # {source}")
        } else {
            format!("{long} = {shown}  # {source}")
        };
        let section = heading(arg);
        match sections.iter_mut().find(|(s, _)| *s == section) {
            Some((_, lines)) => lines.push(line),
            None => sections.push((section, vec![line])),
        }
    }
    let mut out = String::new();
    for (section, lines) in sections {
        out.push_str(&format!("[{section}]\n"));
        for line in lines {
            out.push_str(&line);
            out.push('\n');
        }
        out.push('\n');
    }
    out
}

fn is_list(arg: &clap::Arg) -> bool {
    matches!(arg.get_action(), clap::ArgAction::Append)
}

fn toml_value(v: &str) -> String {
    if v.parse::<i64>().is_ok() || v.parse::<f64>().is_ok_and(|f| f.is_finite()) || v == "true" || v == "false" {
        v.to_string()
    } else {
        format!("{:?}", v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{Arg, ArgAction};

    fn cli() -> Command {
        Command::new("tern").subcommand(
            Command::new("serve")
                .arg(Arg::new("config").long("config").value_parser(clap::value_parser!(PathBuf)))
                .arg(Arg::new("addr").long("addr").env("TEST_TERN_ADDR").default_value("127.0.0.1:8080"))
                .arg(
                    Arg::new("max_running")
                        .long("max-running")
                        .env("TEST_TERN_MAX_RUNNING")
                        .default_value("16")
                        .help_heading("engine"),
                )
                .arg(Arg::new("cors_origin").long("cors-origin").action(ArgAction::Append).help_heading("cors"))
                .arg(Arg::new("q8").long("q8").action(ArgAction::SetTrue).help_heading("model")),
        )
    }

    fn with_file(text: &str, args: &[&str]) -> anyhow::Result<ArgMatches> {
        let dir = std::env::temp_dir().join(format!("tern-config-{}-{}", std::process::id(), args.len()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("tern.toml");
        std::fs::write(&file, text).unwrap();
        let mut argv: Vec<OsString> = vec!["tern".into(), "serve".into(), "--config".into(), file.into()];
        argv.extend(args.iter().map(OsString::from));
        let (m, _) = parse(cli(), argv)?;
        Ok(m.subcommand_matches("serve").unwrap().clone())
    }

    #[test]
    fn the_file_fills_what_flags_leave_unset() {
        let m = with_file(
            "[server]\naddr = \"0.0.0.0:9000\"\n[engine]\nmax_running = 4\n[cors]\ncors-origin = [\"https://a\", \"https://b\"]\n[model]\nq8 = true\n",
            &["--max-running", "8"],
        )
        .unwrap();
        assert_eq!(m.get_one::<String>("addr").unwrap(), "0.0.0.0:9000");
        assert_eq!(m.get_one::<String>("max_running").unwrap(), "8", "a flag beats the file");
        let origins: Vec<&String> = m.get_many("cors_origin").unwrap().collect();
        assert_eq!(origins, ["https://a", "https://b"]);
        assert!(m.get_flag("q8"));
    }

    #[test]
    fn unknown_keys_and_wrong_sections_are_errors() {
        let e = with_file("[engine]\nmax_runing = 4\n", &[]).unwrap_err();
        assert!(format!("{e:#}").contains("unknown setting [engine] max_runing"), "{e:#}");
        let e = with_file("[server]\nmax-running = 4\n", &[]).unwrap_err();
        assert!(format!("{e:#}").contains("unknown setting [server] max-running"), "{e:#}");
        let e = with_file("addr = \"x\"\n", &[]).unwrap_err();
        assert!(format!("{e:#}").contains("must be a [section]"), "{e:#}");
    }

    #[test]
    fn printing_marks_sources_and_masks_secrets() {
        let spec = Command::new("serve")
            .arg(Arg::new("addr").long("addr").default_value("127.0.0.1:8080"))
            .arg(Arg::new("api_key").long("api-key").action(ArgAction::Append).help_heading("auth"));
        let m = spec.clone().get_matches_from(["serve", "--api-key", "sk-secret", "--api-key", "sk-other"]);
        let text = render(&spec, &m, &[]);
        assert!(text.contains("[server]\naddr = \"127.0.0.1:8080\"  # default"), "{text}");
        assert!(text.contains("[auth]\napi-key = \"***\" # 2 key(s)  # flag"), "{text}");
        assert!(!text.contains("sk-secret"), "{text}");
    }
}
