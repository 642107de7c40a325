//! A container as a local process: started in its own process group with stdout and stderr
//! appended to the container's log file, stopped with SIGTERM, a grace period and SIGKILL. When
//! the main process ends, whatever it left in its group is killed, as a container runtime would.

use super::error::{Error, Result};
use k8s_openapi::jiff::Timestamp;
use rustix::process::{kill_process_group, Pid, Signal};
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;
use tokio::process::{Child, Command};

/// How to start one container's process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Launch {
    /// The executable.
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<String>,
    /// Variables set on top of the stand-in's own environment.
    pub env: Vec<(String, String)>,
    /// Working directory.
    pub cwd: PathBuf,
    /// File that stdout and stderr are appended to.
    pub log: PathBuf,
}

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    /// Exit code, or 128 + the signal that killed it.
    pub code: i32,
    /// The signal that killed it, if one did.
    pub signal: Option<i32>,
    /// When it was seen to end.
    pub finished_at: Timestamp,
}

/// A running container process.
#[derive(Debug)]
pub struct Process {
    child: Child,
    pid: u32,
    /// When it was started.
    pub started_at: Timestamp,
}

impl Process {
    /// Starts `launch` for `container`.
    pub fn spawn(container: &str, launch: &Launch) -> Result<Self> {
        if let Some(dir) = launch.log.parent() {
            std::fs::create_dir_all(dir).map_err(|e| Error::io("creating", dir, e))?;
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&launch.log)
            .map_err(|e| Error::io("opening", &launch.log, e))?;
        let log_err = log
            .try_clone()
            .map_err(|e| Error::io("duplicating", &launch.log, e))?;
        let spawn_error = |source| Error::Spawn {
            container: container.into(),
            program: launch.program.clone(),
            source,
        };
        let child = Command::new(&launch.program)
            .args(&launch.args)
            .envs(launch.env.iter().map(|(k, v)| (k, v)))
            .current_dir(&launch.cwd)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_err))
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .map_err(spawn_error)?;
        let pid = child
            .id()
            .ok_or_else(|| spawn_error(std::io::Error::other("exited before its pid was read")))?;
        Ok(Self {
            child,
            pid,
            started_at: Timestamp::now(),
        })
    }

    /// The process id (also its process group id).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Waits for the process to end, then kills what is left of its group. Cancel-safe.
    pub async fn wait(&mut self) -> Exit {
        let status = self.child.wait().await;
        let _ = self.signal(Signal::KILL, "SIGKILL");
        let finished_at = Timestamp::now();
        match status {
            Ok(status) => Exit {
                code: status
                    .code()
                    .or_else(|| status.signal().map(|s| 128 + s))
                    .unwrap_or(-1),
                signal: status.signal(),
                finished_at,
            },
            Err(e) => {
                tracing::warn!(pid = self.pid, error = %e, "cannot wait for process");
                Exit {
                    code: -1,
                    signal: None,
                    finished_at,
                }
            }
        }
    }

    /// SIGTERM to the group, up to `grace` for it to end, then SIGKILL.
    pub async fn stop(&mut self, grace: Duration) -> Exit {
        if let Err(e) = self.signal(Signal::TERM, "SIGTERM") {
            tracing::debug!(error = %e, "process group already gone");
        }
        match tokio::time::timeout(grace, self.wait()).await {
            Ok(exit) => exit,
            Err(_) => {
                tracing::info!(pid = self.pid, ?grace, "grace period over; sending SIGKILL");
                let _ = self.signal(Signal::KILL, "SIGKILL");
                self.wait().await
            }
        }
    }

    fn signal(&self, signal: Signal, name: &'static str) -> Result<()> {
        let group = i32::try_from(self.pid).ok().and_then(Pid::from_raw);
        let error = |source| Error::Signal {
            pid: self.pid,
            signal: name,
            source,
        };
        let group = group.ok_or_else(|| error(std::io::Error::other("invalid pid")))?;
        kill_process_group(group, signal).map_err(|e| error(e.into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn launch(dir: &std::path::Path, script: &str) -> Launch {
        Launch {
            program: "/bin/sh".into(),
            args: vec!["-c".into(), script.into()],
            env: vec![("GREETING".into(), "hello".into())],
            cwd: dir.to_path_buf(),
            log: dir.join("logs/c.log"),
        }
    }

    #[tokio::test]
    async fn output_goes_to_the_log_and_exit_codes_are_reported() {
        let dir = tempfile::tempdir().expect("tempdir");
        let l = launch(dir.path(), "echo $GREETING; echo oops >&2; exit 3");
        let mut p = Process::spawn("c", &l).expect("spawns");
        let exit = p.wait().await;
        assert_eq!((exit.code, exit.signal), (3, None));
        let log = std::fs::read_to_string(&l.log).expect("log");
        assert!(log.contains("hello") && log.contains("oops"), "{log}");
    }

    #[tokio::test]
    async fn stop_escalates_to_sigkill_after_the_grace_period() {
        let dir = tempfile::tempdir().expect("tempdir");
        let l = launch(dir.path(), "trap '' TERM; sleep 30 & wait; sleep 30");
        let mut p = Process::spawn("c", &l).expect("spawns");
        tokio::time::sleep(Duration::from_millis(200)).await;
        let started = std::time::Instant::now();
        let exit = p.stop(Duration::from_millis(300)).await;
        assert_eq!(exit.signal, Some(9));
        assert_eq!(exit.code, 137);
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn sigterm_ends_a_well_behaved_process_at_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut p = Process::spawn("c", &launch(dir.path(), "exec sleep 30")).expect("spawns");
        let exit = p.stop(Duration::from_secs(10)).await;
        assert_eq!((exit.code, exit.signal), (143, Some(15)));
    }
}
