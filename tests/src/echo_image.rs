//! The `FROM scratch` echo image, built from the static echo binary for a
//! test or benchmark run, and removed (with every container made from it)
//! when dropped, even when the run fails.

use std::path::{Path, PathBuf};
use std::process::Command;

/// How the static echo is built; the Justfile's `static-echo` recipe runs it.
pub const STATIC_BUILD: &str = "RUSTFLAGS=\"-C target-feature=+crt-static\" cargo build --release -p rouse-example-echo --target x86_64-unknown-linux-gnu";

/// `target/` of this build (executables live in `target/<profile>` or
/// `target/<profile>/deps`).
pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("path of the executable");
    let mut dir = exe.parent().expect("the executable's directory");
    if dir.ends_with("deps") {
        dir = dir.parent().expect("the profile directory");
    }
    dir.parent().expect("the target directory").to_owned()
}

/// The static echo binary, if it has been built.
pub fn static_echo_binary() -> Option<PathBuf> {
    let path = target_dir().join("x86_64-unknown-linux-gnu/release/echo");
    path.is_file().then_some(path)
}

pub struct EchoImage {
    pub tag: String,
}

impl EchoImage {
    /// Builds the image tagged `tag` out of examples/echo/Dockerfile and the
    /// static binary, from a tar context (as examples/echo/README.md says).
    /// Panics with the build command when the binary is missing.
    pub fn build(tag: &str) -> Self {
        Self::try_build(tag).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Like [`Self::build`], with the reason instead of a panic.
    pub fn try_build(tag: &str) -> Result<Self, String> {
        let binary = static_echo_binary().ok_or_else(|| {
            format!("the static echo is not built: run `{STATIC_BUILD}` first (the Justfile does)")
        })?;
        let release = binary.parent().expect("the binary's directory");
        let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/echo");
        let script = "set -o pipefail; tar -cf - -C \"$1\" Dockerfile -C \"$2\" echo | docker build -q -t \"$3\" -";
        let output = Command::new("bash")
            .args(["-c", script, "build"])
            .arg(&example)
            .arg(release)
            .arg(tag)
            .output()
            .map_err(|e| format!("cannot run bash: {e}"))?;
        if !output.status.success() {
            return Err(format!(
                "docker build of {tag} failed:\n{}",
                String::from_utf8_lossy(&output.stderr)
            ));
        }
        Ok(Self {
            tag: tag.to_owned(),
        })
    }
}

impl Drop for EchoImage {
    fn drop(&mut self) {
        // `ancestor=` matches by image id, and every test's echo image has
        // the same id (the build cache), so the containers are narrowed to
        // those created from this tag: another test's are left running.
        let filter = format!("ancestor={}", self.tag);
        let tagged = format!("{}:latest", self.tag);
        remove_containers(&filter, "{{.Image}}", |image| {
            image == self.tag || image == tagged
        });
        let _ = Command::new("docker")
            .args(["rmi", "-f", &self.tag])
            .output();
    }
}

/// Removes (with their volumes) the containers that `docker ps -a --filter
/// <filter>` lists whose `field` (a `--format` template) `pick` accepts.
pub fn remove_containers(filter: &str, field: &str, pick: impl Fn(&str) -> bool) {
    let Ok(listed) = Command::new("docker")
        .args(["ps", "-a", "--filter", filter])
        .args(["--format", &format!("{{{{.ID}}}} {field}")])
        .output()
    else {
        return;
    };
    let listed = String::from_utf8_lossy(&listed.stdout);
    let ids: Vec<&str> = listed
        .lines()
        .filter_map(|l| l.split_once(' '))
        .filter(|(_, value)| pick(value))
        .map(|(id, _)| id)
        .collect();
    if !ids.is_empty() {
        let _ = Command::new("docker")
            .args(["rm", "-f", "-v"])
            .args(&ids)
            .output();
    }
}

/// A local Python base image (no registry can be reached here): the
/// machine's Debian `python3` with its standard library, `pip`, the shared
/// libraries they load and the CA certificates, imported as `tag`, with no
/// shell. Removed on drop.
pub struct PythonBaseImage {
    pub tag: String,
}

impl PythonBaseImage {
    pub fn build(tag: &str) -> Self {
        const SCRIPT: &str = r#"set -euo pipefail
py=$(readlink -f /usr/bin/python3)
stdlib=/usr/lib/$(basename "$py")
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
mkdir -p "$root/usr/bin" "$root/usr/lib/python3/dist-packages" "$root/etc/ssl/certs" "$root/tmp"
cp -a "$stdlib" "$root/usr/lib/"
rm -f "$root$stdlib/EXTERNALLY-MANAGED"
cp -a /usr/lib/python3/dist-packages/pip "$root/usr/lib/python3/dist-packages/"
cp "$py" "$root$py"
ln -s "$(basename "$py")" "$root/usr/bin/python3"
{ ldd "$py"; for so in "$stdlib"/lib-dynload/*.so; do ldd "$so"; done; } \
  | grep -o '/[^ ]*' | sort -u | while read -r lib; do
    mkdir -p "$root$(dirname "$lib")"; cp -L "$lib" "$root$lib"; done
cp -L /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/"
tar -C "$root" -c . | docker import - "$1" >/dev/null
"#;
        let output = Command::new("bash")
            .args(["-c", SCRIPT, "python-base"])
            .arg(tag)
            .output()
            .expect("bash");
        assert!(
            output.status.success(),
            "cannot make the Python base image {tag} (Debian's python3 and python3-pip, which .ci/setup installs):\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        Self {
            tag: tag.to_owned(),
        }
    }
}

impl Drop for PythonBaseImage {
    fn drop(&mut self) {
        let _ = Command::new("docker")
            .args(["rmi", "-f", &self.tag])
            .output();
    }
}
