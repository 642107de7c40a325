//! The project's own binaries as the end-to-end suites run them: next to the test executable
//! (`target/<profile>/`), built by `cargo test --workspace` (or `make test`) before tests run.

use anyhow::{bail, Result};
use std::path::PathBuf;

/// Path of the workspace binary `name` in the same profile as the running test.
pub fn workspace_binary(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    // target/<profile>/deps/<test> → target/<profile>/<name>
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .map(PathBuf::from)
        .unwrap_or_default();
    let path = profile_dir.join(name);
    if !path.is_file() {
        bail!(
            "{} is not built; run `cargo build --workspace --bins` (make test does) first",
            path.display()
        );
    }
    Ok(path)
}
