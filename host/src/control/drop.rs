//! The watched plugin directory (`host.drop_dir`, default `DATA_DIR/drop`): a component put in
//! `DROP/PLANT/NAME.wasm` is deployed to that plant (origin `drop`, the same gate as an upload)
//! and made active; then it is moved to `DROP/PLANT/deployed/`, or, refused, to
//! `DROP/PLANT/refused/` beside `NAME.wasm.reason` (the reason, one line).
//!
//! Only `*.wasm` files directly under a plant folder are taken, once they have stopped changing
//! ([`super::watch`]); write elsewhere (or as `NAME.wasm.part`) and rename to be sure a file is
//! never read half-written. Files already there when the host starts are taken then.
//!
//! A candidate must be a regular file — not a symbolic link, device, FIFO or socket — owned by
//! the host's user, not writable by others, and at most `host.max_component_mib`; anything else
//! is refused with the reason before a byte of it is read (it is opened without following links
//! and checked on the open file, so it cannot be swapped in between).

use super::watch::Settled;
use crate::control::deploy::{Deployer, Slot};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Where accepted and refused files go, under each plant folder.
pub const DEPLOYED: &str = "deployed";
pub const REFUSED: &str = "refused";

/// Make the drop folder and its plant folders and start watching it (files already there
/// included); `None`, logged, if it cannot be used. Called before the host says it listens, so
/// nothing dropped after that is missed.
pub fn watch(deployer: &Deployer, dir: &Path, settle: Duration) -> Option<(PathBuf, Settled)> {
    // Events name absolute paths; so does everything here.
    let dir = match prepare(deployer, dir).and_then(|()| dir.canonicalize()) {
        Ok(dir) => dir,
        Err(e) => {
            tracing::error!(dir = %dir.display(), error = %e, "the plugin drop directory cannot be used; not watching it");
            return None;
        }
    };
    match super::watch::watch(&dir, true, settle, already_there(&dir)) {
        Ok(settled) => {
            tracing::info!(dir = %dir.display(), "watching for dropped plugins");
            Some((dir, settled))
        }
        Err(e) => {
            tracing::error!(dir = %dir.display(), error = %e, "cannot watch the plugin drop directory");
            None
        }
    }
}

/// Deploy what settles in the drop folder (from [`watch`]) until `shutdown` turns true.
pub async fn serve(
    deployer: Arc<Deployer>,
    (dir, mut settled): (PathBuf, Settled),
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            path = settled.paths.recv() => match path {
                Some(path) => take(&deployer, &dir, path).await,
                None => break,
            },
            _ = shutdown.changed() => break,
        }
    }
}

/// Create the drop folder and one folder per configured plant.
fn prepare(deployer: &Deployer, dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    for route in deployer.routes().all() {
        std::fs::create_dir_all(dir.join(&route.plant))?;
    }
    Ok(())
}

/// Candidates dropped while the host was not running.
fn already_there(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for plant in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        for file in std::fs::read_dir(plant.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            found.push(file.path());
        }
    }
    found.sort();
    found
}

/// The plant a path is a candidate for: `DROP/PLANT/NAME.wasm`, a file.
fn candidate<'a>(dir: &Path, path: &'a Path) -> Option<&'a str> {
    let relative = path.strip_prefix(dir).ok()?;
    let mut parts = relative.components();
    let plant = parts.next()?.as_os_str().to_str()?;
    let name = parts.next()?.as_os_str().to_str()?;
    // Not following links: a link (or a FIFO) named like a candidate is taken, to be refused.
    let wanted = parts.next().is_none()
        && name.ends_with(".wasm")
        && !name.starts_with('.')
        && path
            .symlink_metadata()
            .is_ok_and(|m| !m.file_type().is_dir());
    wanted.then_some(plant)
}

async fn take(deployer: &Arc<Deployer>, dir: &Path, path: PathBuf) {
    let Some(plant) = candidate(dir, &path).map(str::to_string) else {
        return;
    };
    let deployer_ = Arc::clone(deployer);
    let path_ = path.clone();
    let outcome = tokio::task::spawn_blocking(move || deploy(&deployer_, &plant, &path_)).await;
    let (folder, reason) = match outcome {
        Ok(Ok(_)) => (DEPLOYED, None),
        Ok(Err(reason)) => (REFUSED, Some(reason)),
        Err(e) => (REFUSED, Some(format!("the deploy stopped: {e}"))),
    };
    match file_away(&path, folder, reason.as_deref()) {
        Ok(()) => {}
        Err(Filed::NotMoved(e)) => {
            tracing::error!(file = %path.display(), error = %e, "cannot move a dropped plugin out of the drop folder");
        }
        Err(Filed::NoReason(e)) => {
            tracing::error!(file = %path.display(), error = %e, reason = reason.as_deref().unwrap_or_default(), "a refused plugin was moved aside but its reason could not be written beside it");
        }
    }
}

/// Deploy and activate one dropped file; the reason if it was refused.
fn deploy(
    d: &Deployer,
    plant: &str,
    path: &Path,
) -> Result<crate::control::registry::Activation, String> {
    let by = format!(
        "drop:{}",
        path.file_name().unwrap_or_default().to_string_lossy()
    );
    let bytes = read_candidate(path, d.max_component_bytes())
        .inspect_err(|reason| d.refused(plant, "drop", &by, "unread", reason))?;
    let version = d
        .deploy(plant, &bytes, &by, "drop")
        .map_err(|e| e.to_string())?;
    let activated = d
        .activate(
            Slot {
                plant,
                plugin: &version.plugin,
            },
            &version.version,
            &by,
            "activate",
        )
        .map_err(|e| e.to_string())?;
    tracing::info!(file = %path.display(), plant, plugin = %version.plugin, version = %version.version, took_ms = activated.took_ms, "dropped plugin deployed and active");
    Ok(activated.activation)
}

/// The bytes of a dropped file, if it is one the host may take (see the module's docs).
fn read_candidate(path: &Path, max_bytes: usize) -> Result<Vec<u8>, String> {
    use std::io::Read;
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let link = path
        .symlink_metadata()
        .map_err(|e| format!("cannot read {name}: {e}"))?;
    if link.file_type().is_symlink() {
        return Err(format!(
            "{name} is a symbolic link; drop the component file itself (links are never followed)"
        ));
    }
    let flags = rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::NONBLOCK;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(flags.bits() as i32)
        .open(path)
        .map_err(|e| format!("cannot open {name} (links are not followed): {e}"))?;
    let meta = file
        .metadata()
        .map_err(|e| format!("cannot read {name}: {e}"))?;
    if !meta.file_type().is_file() {
        return Err(format!(
            "{name} is not a regular file (a device, FIFO or socket); drop the component file itself"
        ));
    }
    let me = rustix::process::geteuid().as_raw();
    if meta.uid() != me {
        return Err(format!(
            "{name} belongs to user {} and the host runs as {me}; only files of the host's user are taken",
            meta.uid()
        ));
    }
    if meta.mode() & 0o002 != 0 {
        return Err(format!(
            "{name} is writable by others (mode {:o}); make it writable by its owner only",
            meta.mode() & 0o7777
        ));
    }
    if meta.len() > max_bytes as u64 {
        return Err(format!(
            "{name} is {} bytes; at most {} MiB are accepted (host.max_component_mib)",
            meta.len(),
            max_bytes >> 20
        ));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(max_bytes as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read {name}: {e}"))?;
    if bytes.len() > max_bytes {
        return Err(format!(
            "{name} grew past {} MiB while read (host.max_component_mib)",
            max_bytes >> 20
        ));
    }
    Ok(bytes)
}

/// Why a dropped file was not filed away whole.
enum Filed {
    NotMoved(std::io::Error),
    NoReason(std::io::Error),
}

/// Move `path` into `folder` beside it (and write the reason next to it when refused).
///
/// The file moves first and its reason follows: whoever sees a reason finds the file beside it.
/// The reason of an earlier file of the same name goes first, so it is never read as this one's.
fn file_away(path: &Path, folder: &str, reason: Option<&str>) -> Result<(), Filed> {
    let parent = path.parent().expect("a candidate has a plant folder");
    let name = path.file_name().expect("a candidate has a name");
    let target_dir = parent.join(folder);
    std::fs::create_dir_all(&target_dir).map_err(Filed::NotMoved)?;
    let target = target_dir.join(name);
    let mut note = target.clone().into_os_string();
    note.push(".reason");
    let note = PathBuf::from(note);
    if reason.is_some() {
        match std::fs::remove_file(&note) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(Filed::NotMoved(e)),
            _ => {}
        }
    }
    std::fs::rename(path, &target).map_err(Filed::NotMoved)?;
    if let Some(reason) = reason {
        // Written aside, then renamed: whoever watches the folder sees the whole reason or none.
        let mut partial = note.clone().into_os_string();
        partial.push(".partial");
        let partial = PathBuf::from(partial);
        std::fs::write(&partial, format!("{reason}\n")).map_err(Filed::NoReason)?;
        std::fs::rename(partial, note).map_err(Filed::NoReason)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_file_has_its_own_reason_beside_it_never_an_earlier_one() {
        let dir = tempfile::tempdir().unwrap();
        let plant = dir.path().join("plant-a");
        std::fs::create_dir_all(&plant).unwrap();
        let file = plant.join("junk.wasm");
        for (bytes, reason) in [("first", "reason a"), ("second", "reason b")] {
            std::fs::write(&file, bytes).unwrap();
            assert!(file_away(&file, REFUSED, Some(reason)).is_ok());
            let refused = plant.join(REFUSED);
            assert_eq!(
                std::fs::read_to_string(refused.join("junk.wasm")).unwrap(),
                bytes
            );
            assert_eq!(
                std::fs::read_to_string(refused.join("junk.wasm.reason")).unwrap(),
                format!("{reason}\n")
            );
            assert!(!file.exists());
            assert!(!refused.join("junk.wasm.reason.partial").exists());
        }
        // Deployed: moved, no reason written.
        std::fs::write(&file, "good").unwrap();
        assert!(file_away(&file, DEPLOYED, None).is_ok());
        assert!(plant.join(DEPLOYED).join("junk.wasm").is_file());
        assert!(!plant.join(DEPLOYED).join("junk.wasm.reason").exists());
    }
}
