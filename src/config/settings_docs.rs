//! `.env.example` and the settings table of docs/DEPLOYMENT.md, generated from the
//! declarations so that they cannot drift: the tests fail when either file is stale. Run
//! `UPDRAFT_BLESS=1 cargo nextest run --lib settings_docs` to rewrite them.

use std::path::{Path, PathBuf};

use super::{GROUPS, SETTINGS, Setting};

const TABLE_START: &str = "<!-- settings: generated from src/config/declarations.rs by `config::settings_docs`; do not edit -->\n";
const TABLE_END: &str = "<!-- end of settings -->";

const ENV_EXAMPLE_HEADER: &str = "\
# Updraft settings.
#
# Copy this file to `.env` in the folder you start `updraft serve` from (or give the
# variables to the process in any other way: systemd EnvironmentFile, docker
# `env_file`, ...) and uncomment what you change. Every setting can also be given as
# a command-line flag of `updraft serve` (shown below) or as a key of the optional
# TOML file (the setting name in lower case without the `UPDRAFT_` prefix).
#
# Precedence, highest first: command-line flag, environment variable, this `.env`
# file, the TOML file (--config), the built-in default. Start-up warns about
# UPDRAFT_* variables and `.env` keys that are no setting.
# `updraft serve --help` lists the same settings.
#
# Generated from src/config/declarations.rs; do not edit (see docs/DEVELOPMENT.md).
";

/// Lines of comments are wrapped at this width.
const WIDTH: usize = 90;

fn repository_file(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(name)
}

/// `text` as comment lines of at most `WIDTH` characters (a longer word stays whole).
fn comment(text: &str) -> String {
    let mut out = String::new();
    let mut line = String::from("#");
    for word in text.split_whitespace() {
        if line.len() > 1 && line.chars().count() + 1 + word.chars().count() > WIDTH {
            out.push_str(&line);
            out.push('\n');
            line = String::from("#");
        }
        line.push(' ');
        line.push_str(word);
    }
    out.push_str(&line);
    out.push('\n');
    out
}

/// "Default: ...", for `.env.example`.
fn default_text(setting: &Setting) -> String {
    match (setting.default, setting.default_doc) {
        ("", "") => "none".into(),
        ("", described) => described.into(),
        (value, _) => value.into(),
    }
}

fn range_text(setting: &Setting) -> Option<String> {
    setting.range().map(|(min, max)| match max {
        u64::MAX => format!("at least {min}"),
        _ => format!("{min}-{max}"),
    })
}

/// The whole of `.env.example`.
pub fn env_example() -> String {
    let mut out = String::from(ENV_EXAMPLE_HEADER);
    for (title, introduction) in GROUPS {
        let heading = format!("# --- {title} ");
        out.push_str(&format!("\n{heading}{}\n", "-".repeat(80usize.saturating_sub(heading.chars().count()))));
        if !introduction.trim().is_empty() {
            out.push_str(&comment(introduction));
        }
        for setting in SETTINGS.iter().filter(|setting| setting.group == *title) {
            out.push('\n');
            for paragraph in setting.paragraphs() {
                out.push_str(&comment(&paragraph));
            }
            let mut facts = format!("Flag: --{}. Default: {}.", setting.flag(), default_text(setting));
            if let Some(range) = range_text(setting) {
                facts.push_str(&format!(" Range: {range}."));
            }
            let also: Vec<&str> = setting.also_read_from().collect();
            if !also.is_empty() {
                facts.push_str(&format!(" When unset, also read from {}.", also.join(", then ")));
            }
            out.push_str(&comment(&facts));
            let example = if setting.example.is_empty() { setting.default } else { setting.example };
            out.push_str(&format!("# {}={example}\n", setting.env()));
        }
    }
    out
}

fn cell(text: &str) -> String {
    text.replace('|', "\\|")
}

/// The table of docs/DEPLOYMENT.md, with its markers.
pub fn deployment_table() -> String {
    let mut out = String::from(TABLE_START);
    out.push_str("| setting | default | meaning |\n|---|---|---|\n");
    for setting in SETTINGS {
        let mut name = format!("`{}`", setting.env());
        let also: Vec<String> = setting.also_read_from().map(|other| format!("`{other}`")).collect();
        if !also.is_empty() {
            name.push_str(&format!(" (or {})", also.join(", ")));
        }
        let default = match (setting.default, setting.default_doc) {
            ("", "") => "none".to_string(),
            ("", described) => described.to_string(),
            (value, _) => format!("`{value}`"),
        };
        let mut meaning = setting.summary();
        if let Some(range) = range_text(setting) {
            meaning.push_str(&format!(" Range: {range}."));
        }
        out.push_str(&format!("| {} | {} | {} |\n", cell(&name), cell(&default), cell(&meaning)));
    }
    out.push_str(TABLE_END);
    out
}

/// Fails, or rewrites the file with `UPDRAFT_BLESS` set, when `current` is not `generated`.
fn check(file: &str, current: &str, generated: &str, rewritten: impl FnOnce() -> String) {
    if current == generated {
        return;
    }
    if std::env::var_os("UPDRAFT_BLESS").is_some() {
        std::fs::write(repository_file(file), rewritten()).unwrap();
        return;
    }
    panic!(
        "{file} is out of date with src/config/declarations.rs: run `UPDRAFT_BLESS=1 cargo nextest run --lib settings_docs` to \
         rewrite it.\nIt should be:\n{generated}"
    );
}

#[test]
fn env_example_is_generated_from_the_declarations() {
    let current = std::fs::read_to_string(repository_file(".env.example")).unwrap_or_default();
    let generated = env_example();
    check(".env.example", &current, &generated, || generated.clone());
}

#[test]
fn the_settings_table_of_the_deployment_docs_is_generated_from_the_declarations() {
    let docs = std::fs::read_to_string(repository_file("docs/DEPLOYMENT.md")).unwrap();
    let start = docs.find(TABLE_START).expect("docs/DEPLOYMENT.md has the settings table's start marker");
    let end = docs[start..].find(TABLE_END).map(|at| start + at + TABLE_END.len()).expect("docs/DEPLOYMENT.md has its end marker");
    let generated = deployment_table();
    check("docs/DEPLOYMENT.md", &docs[start..end], &generated, || format!("{}{generated}{}", &docs[..start], &docs[end..]));
}

#[test]
fn the_generated_files_name_every_setting() {
    let (example, table) = (env_example(), deployment_table());
    for setting in SETTINGS {
        let env = setting.env();
        assert!(example.contains(&format!("# {env}=")), "{env} has no example line");
        assert!(table.contains(&format!("| `{env}`")), "{env} has no row");
    }
}
