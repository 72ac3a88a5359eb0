//! Function builds (`rouse functions deploy`): a Python file with `main(args,
//! context)` and its requirements become a command revision on the process
//! runtime.
//!
//! - The api writes the file and the requirements into a directory named by
//!   their hash ([`write_source`]); a deploy of the same code reuses it.
//! - The build installs the requirements into a virtual environment named by
//!   the hash of the requirements and the interpreter
//!   ([`prepare`]): once per distinct requirements, shared by every function
//!   that names the same ones, made aside and renamed into place when
//!   complete, so an interrupted install is never taken for a ready one.
//!   `uv` does it when it is on the `PATH`, `python3 -m venv` and pip
//!   otherwise.
//! - The runner (`function_runner.py`, the standard library only) is written
//!   beside the file and serves `main` over HTTP as every instance is
//!   served; the revision runs it with the environment's interpreter.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use rouse_core::revision::RevisionSource;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio_util::sync::CancellationToken;

use crate::log::BuildLog;

/// The runner, written beside each function as [`RUNNER_FILE`].
pub const RUNNER: &str = include_str!("function_runner.py");
pub use rouse_core::function::RUNNER_FILE;
/// The function's file and requirements, in its source directory.
pub const MAIN_FILE: &str = "main.py";
pub const REQUIREMENTS_FILE: &str = "requirements.txt";
/// The interpreter environments are made from (`python3` on the `PATH`
/// unless `ROUSE_FUNCTION_PYTHON` names another).
const PYTHON_VAR: &str = "ROUSE_FUNCTION_PYTHON";
/// Marks a complete environment.
const READY: &str = ".rouse-ready";

fn hash(parts: &[&[u8]]) -> String {
    let mut context = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    for part in parts {
        // Lengths first, so ("ab", "c") and ("a", "bc") differ.
        context.update(&(part.len() as u64).to_be_bytes());
        context.update(part);
    }
    crate::hex(&context.finish().as_ref()[..8])
}

/// Writes a function's file and requirements under
/// `<functions_dir>/<project>-<service>/<hash>/` (made aside and renamed,
/// so a directory that exists is complete) and returns that directory.
pub fn write_source(
    functions_dir: &Path,
    project: &str,
    service: &str,
    code: &str,
    requirements: &str,
) -> std::io::Result<PathBuf> {
    let parent = functions_dir.join(format!("{project}-{service}"));
    let dir = parent.join(hash(&[code.as_bytes(), requirements.as_bytes()]));
    if dir.join(MAIN_FILE).is_file() {
        return Ok(dir);
    }
    std::fs::create_dir_all(&parent)?;
    let aside = tempfile::Builder::new()
        .prefix(".new-")
        .tempdir_in(&parent)?;
    std::fs::write(aside.path().join(MAIN_FILE), code)?;
    std::fs::write(aside.path().join(REQUIREMENTS_FILE), requirements)?;
    match std::fs::rename(aside.path(), &dir) {
        Ok(()) => {
            // Renamed away: nothing left for the guard to remove.
            let _ = aside.keep();
            Ok(dir)
        }
        // Another deploy of the same code got there first.
        Err(_) if dir.join(MAIN_FILE).is_file() => Ok(dir),
        Err(e) => Err(e),
    }
}

/// Installs the requirements of the function in `dir` (once per distinct
/// requirements and interpreter, under `envs`), writes the runner beside
/// it, and returns what the revision runs.
pub(crate) async fn prepare(
    envs: &Path,
    dir: &Path,
    log: &BuildLog,
    cancel: &CancellationToken,
) -> Result<RevisionSource, String> {
    let main = dir.join(MAIN_FILE);
    if !main.is_file() {
        return Err(format!(
            "the function's file {} is gone; deploy the function again",
            main.display()
        ));
    }
    let requirements = tokio::fs::read_to_string(dir.join(REQUIREMENTS_FILE))
        .await
        .unwrap_or_default();
    let python = std::env::var(PYTHON_VAR).unwrap_or_else(|_| "python3".into());
    let version = interpreter(&python).await?;
    let key = hash(&[
        python.as_bytes(),
        version.as_bytes(),
        requirements.as_bytes(),
    ]);
    let env = envs.join(&key);
    if env.join(READY).is_file() {
        log.line(format!(
            "the requirements are installed already: environment {key} ({version})"
        ));
    } else {
        // One install at a time: two builds of the same requirements make
        // the environment once.
        static INSTALLING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
        let _one = INSTALLING.lock().await;
        if env.join(READY).is_file() {
            log.line(format!("environment {key} was made meanwhile"));
        } else {
            make_env(&python, &version, &env, &requirements, log, cancel).await?;
        }
    }
    tokio::fs::write(dir.join(RUNNER_FILE), RUNNER)
        .await
        .map_err(|e| format!("cannot write the runner into {}: {e}", dir.display()))?;
    Ok(RevisionSource::Command {
        program: env.join("bin/python").display().to_string(),
        args: vec!["-u".into(), RUNNER_FILE.into()],
        workdir: dir.to_path_buf(),
    })
}

/// The Dockerfile of a function's requirements image, in [`ImageContext`].
pub const ENV_DOCKERFILE: &str = "Dockerfile.env";
/// The Dockerfile of a function's image, in [`ImageContext`].
pub const FUNCTION_DOCKERFILE: &str = "Dockerfile.function";
/// Where the requirements go in the image (on `PYTHONPATH`).
const PACKAGES: &str = "/opt/rouse-function/packages";

/// A build context for a function's images: its file, requirements and
/// runner, and two generated Dockerfiles. Every instruction is in exec form,
/// so the base image needs `python3` (and `pip` for requirements), no shell.
pub struct ImageContext {
    pub dir: tempfile::TempDir,
    /// `rouse/function-env:<hash of the base image's id and the
    /// requirements>`: made once, reused by every function with both.
    pub env_tag: String,
    /// The function's own hash (its source directory's name).
    pub hash: String,
}

pub(crate) async fn image_context(
    source: &Path,
    base: &str,
    base_id: &str,
) -> Result<ImageContext, String> {
    let main = source.join(MAIN_FILE);
    let code = tokio::fs::read(&main).await.map_err(|e| {
        format!(
            "the function's file {} is gone ({e}); deploy the function again",
            main.display()
        )
    })?;
    let requirements = tokio::fs::read_to_string(source.join(REQUIREMENTS_FILE))
        .await
        .unwrap_or_default();
    let env_tag = format!(
        "rouse/function-env:{}",
        hash(&[base_id.as_bytes(), requirements.as_bytes()])
    );
    let install = if requirements.trim().is_empty() {
        String::new()
    } else {
        format!(
            "COPY {REQUIREMENTS_FILE} /opt/rouse-function/{REQUIREMENTS_FILE}\n\
             RUN [\"python3\", \"-m\", \"pip\", \"install\", \"--no-cache-dir\", \"--disable-pip-version-check\", \"--target\", \"{PACKAGES}\", \"-r\", \"/opt/rouse-function/{REQUIREMENTS_FILE}\"]\n"
        )
    };
    let env_dockerfile = format!("FROM {base}\n{install}");
    let function_dockerfile = format!(
        "FROM {env_tag}\n\
         ENV PYTHONPATH={PACKAGES} PYTHONUNBUFFERED=1\n\
         WORKDIR /function\n\
         COPY {MAIN_FILE} {RUNNER_FILE} /function/\n\
         EXPOSE 8080\n\
         ENTRYPOINT [\"python3\", \"-u\", \"{RUNNER_FILE}\"]\n"
    );
    let dir = tempfile::Builder::new()
        .prefix("rouse-function-image-")
        .tempdir()
        .map_err(|e| format!("cannot make a build context: {e}"))?;
    let files: [(&str, &[u8]); 5] = [
        (MAIN_FILE, &code),
        (REQUIREMENTS_FILE, requirements.as_bytes()),
        (RUNNER_FILE, RUNNER.as_bytes()),
        (ENV_DOCKERFILE, env_dockerfile.as_bytes()),
        (FUNCTION_DOCKERFILE, function_dockerfile.as_bytes()),
    ];
    for (name, bytes) in files {
        let path = dir.path().join(name);
        tokio::fs::write(&path, bytes)
            .await
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    let hash = source
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    Ok(ImageContext { dir, env_tag, hash })
}

/// `python --version`, which also checks that the interpreter runs.
async fn interpreter(python: &str) -> Result<String, String> {
    let out = tokio::process::Command::new(python)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|e| {
            format!("cannot run `{python}` to make the function's environment ({e}); install Python 3 or set {PYTHON_VAR} to an interpreter")
        })?;
    let text = String::from_utf8_lossy(if out.stdout.is_empty() {
        &out.stderr
    } else {
        &out.stdout
    })
    .trim()
    .to_owned();
    if !out.status.success() || !text.starts_with("Python 3") {
        return Err(format!(
            "`{python} --version` answered `{text}` ({}); functions need Python 3: install it or set {PYTHON_VAR}",
            out.status
        ));
    }
    Ok(text)
}

async fn make_env(
    python: &str,
    version: &str,
    env: &Path,
    requirements: &str,
    log: &BuildLog,
    cancel: &CancellationToken,
) -> Result<(), String> {
    let parent = env.parent().unwrap_or(env);
    tokio::fs::create_dir_all(parent)
        .await
        .map_err(|e| format!("cannot make {}: {e}", parent.display()))?;
    let aside = tempfile::Builder::new()
        .prefix(".new-")
        .tempdir_in(parent)
        .map_err(|e| format!("cannot make a directory in {}: {e}", parent.display()))?;
    let at = aside.path();
    let requirements_file = at.join(REQUIREMENTS_FILE);
    tokio::fs::write(&requirements_file, requirements)
        .await
        .map_err(|e| format!("cannot write {}: {e}", requirements_file.display()))?;
    let has_requirements = requirements
        .lines()
        .any(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'));
    let uv = on_path("uv");
    log.line(format!(
        "making the function's environment ({version}, {}) with {}",
        if has_requirements {
            "installing its requirements"
        } else {
            "no requirements"
        },
        if uv.is_some() { "uv" } else { "venv and pip" }
    ));
    let venv_python = at.join("bin/python");
    let steps: Vec<(String, Vec<String>)> = match &uv {
        Some(uv) => {
            let uv = uv.display().to_string();
            let mut steps = vec![(
                uv.clone(),
                vec![
                    "venv".into(),
                    "--quiet".into(),
                    "--python".into(),
                    python.into(),
                    at.display().to_string(),
                ],
            )];
            if has_requirements {
                steps.push((
                    uv,
                    vec![
                        "pip".into(),
                        "install".into(),
                        "--python".into(),
                        venv_python.display().to_string(),
                        "-r".into(),
                        requirements_file.display().to_string(),
                    ],
                ));
            }
            steps
        }
        None => {
            let mut steps = vec![(
                python.to_owned(),
                vec!["-m".into(), "venv".into(), at.display().to_string()],
            )];
            if has_requirements {
                steps.push((
                    venv_python.display().to_string(),
                    vec![
                        "-m".into(),
                        "pip".into(),
                        "install".into(),
                        "--disable-pip-version-check".into(),
                        "--no-input".into(),
                        "--progress-bar".into(),
                        "off".into(),
                        "-r".into(),
                        requirements_file.display().to_string(),
                    ],
                ));
            }
            steps
        }
    };
    for (program, args) in steps {
        run_logged(&program, &args, log, cancel).await?;
    }
    tokio::fs::write(at.join(READY), version)
        .await
        .map_err(|e| format!("cannot mark the environment complete: {e}"))?;
    tokio::fs::rename(at, env)
        .await
        .map_err(|e| format!("cannot move the environment to {}: {e}", env.display()))?;
    let _ = aside.keep();
    log.line(format!("environment ready at {}", env.display()));
    Ok(())
}

/// Runs a command, its output lines into the build log; a cancel kills its
/// whole process group, as git's are killed.
async fn run_logged(
    program: &str,
    args: &[String],
    log: &BuildLog,
    cancel: &CancellationToken,
) -> Result<(), String> {
    let shown = format!("{program} {}", args.join(" "));
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env("PIP_NO_INPUT", "1")
        // Its own group, so a cancel reaches what pip starts (build backends).
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot run `{shown}`: {e}"))?;
    let mut out = child.stdout.take().map(|o| BufReader::new(o).lines());
    let mut err = child.stderr.take().map(|e| BufReader::new(e).lines());
    loop {
        tokio::select! {
            () = cancel.cancelled() => {
                crate::git::kill_group(child.id());
                return Err("the build was stopped".into());
            }
            line = async { out.as_mut()?.next_line().await.ok().flatten() }, if out.is_some() => {
                match line { Some(l) => log.line(l), None => out = None }
            }
            line = async { err.as_mut()?.next_line().await.ok().flatten() }, if err.is_some() => {
                match line { Some(l) => log.line(l), None => err = None }
            }
            status = child.wait(), if out.is_none() && err.is_none() => {
                let status = status.map_err(|e| format!("`{shown}` failed: {e}"))?;
                return if status.success() {
                    Ok(())
                } else {
                    Err(format!("`{shown}` failed ({status}); its output is in the build log"))
                };
            }
        }
    }
}

fn on_path(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(program))
            .find(|p| p.is_file())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_code_is_written_once_and_other_code_elsewhere() {
        let root = tempfile::tempdir().expect("tempdir");
        let code = "def main(args, context):\n    return 1\n";
        let a = write_source(root.path(), "p", "f", code, "").expect("written");
        let again = write_source(root.path(), "p", "f", code, "").expect("written");
        assert_eq!(a, again);
        assert_eq!(
            std::fs::read_to_string(a.join(MAIN_FILE)).expect("read"),
            code
        );
        let other = write_source(root.path(), "p", "f", code, "six\n").expect("written");
        assert_ne!(a, other, "other requirements are another source");
        assert_eq!(
            std::fs::read_to_string(other.join(REQUIREMENTS_FILE)).expect("read"),
            "six\n"
        );
        // Nothing half-made is left beside them.
        let names: Vec<String> = std::fs::read_dir(root.path().join("p-f"))
            .expect("listed")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        assert!(names.iter().all(|n| !n.starts_with('.')), "{names:?}");
        assert_eq!(names.len(), 2);
    }
}
