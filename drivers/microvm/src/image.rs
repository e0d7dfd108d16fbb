//! The sandbox image as a directory tree: exported once per image id from the local Docker
//! or Podman store (create a stopped container, export it, remove it) and cached under the
//! driver's state directory, from which each sandbox's disk is made.

use std::path::{Path, PathBuf};

use openshell_drivers::DriverError;
use tokio::process::Command;

use crate::host::{run_tool, unavailable};

/// An exported image: its tree and what its config says about the main process.
#[derive(Debug, Clone)]
pub struct Rootfs {
    pub dir: PathBuf,
    /// `KEY=VALUE` entries of the image's `Env`.
    pub env: Vec<String>,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
}

#[derive(serde::Deserialize, serde::Serialize, Default)]
#[serde(rename_all = "PascalCase")]
struct ImageConfig {
    #[serde(default)]
    env: Option<Vec<String>>,
    #[serde(default)]
    entrypoint: Option<Vec<String>>,
    #[serde(default)]
    cmd: Option<Vec<String>>,
}

/// Exports `image` with `tool` (`docker` or `podman`) into `cache/<image id>/`, unless it is
/// there already. Concurrent exports of one image both succeed; the first rename wins.
pub async fn rootfs(tool: &str, image: &str, cache: &Path) -> Result<Rootfs, DriverError> {
    let inspect = Command::new(tool)
        .args([
            "image",
            "inspect",
            "--format",
            "{{.Id}} {{json .Config}}",
            image,
        ])
        .output()
        .await
        .map_err(|e| unavailable(tool, &e, image_tool_hint(tool)))?;
    if !inspect.status.success() {
        let err = String::from_utf8_lossy(&inspect.stderr).to_lowercase();
        if err.contains("no such image") || err.contains("image not known") {
            return Err(DriverError::ImageNotFound {
                runtime: tool.into(),
                image: image.into(),
            });
        }
        return Err(DriverError::RuntimeUnavailable {
            runtime: tool.into(),
            endpoint: "its default socket".into(),
            reason: err.trim().to_string(),
            hint: image_tool_hint(tool).into(),
        });
    }
    let out = String::from_utf8_lossy(&inspect.stdout).trim().to_string();
    let (id, config) = out.split_once(' ').unwrap_or((out.as_str(), "{}"));
    let id = id.trim_start_matches("sha256:");
    let config: ImageConfig = serde_json::from_str(config).unwrap_or_default();
    let dest = cache.join(id);
    let rootfs = Rootfs {
        dir: dest.join("rootfs"),
        env: config.env.unwrap_or_default(),
        entrypoint: config.entrypoint.unwrap_or_default(),
        cmd: config.cmd.unwrap_or_default(),
    };
    if rootfs.dir.is_dir() {
        return Ok(rootfs);
    }
    tokio::fs::create_dir_all(cache)
        .await
        .map_err(|e| backend("create the image cache", cache, e))?;
    // Unique per call: two creates of one gateway may export the same image at once.
    static EXPORTS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = EXPORTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = cache.join(format!(".export-{id}-{}-{n}", std::process::id()));
    let _ = tokio::fs::remove_dir_all(&tmp).await;
    let result = export(tool, image, &tmp).await;
    if let Err(e) = result {
        let _ = tokio::fs::remove_dir_all(&tmp).await;
        return Err(e);
    }
    if tokio::fs::rename(&tmp, &dest).await.is_err() {
        // Another create exported the same image first.
        let _ = tokio::fs::remove_dir_all(&tmp).await;
    }
    tracing::info!(image, id, dir = %dest.display(), "exported the sandbox image for VMs");
    Ok(rootfs)
}

async fn export(tool: &str, image: &str, tmp: &Path) -> Result<(), DriverError> {
    let tree = tmp.join("rootfs");
    tokio::fs::create_dir_all(&tree)
        .await
        .map_err(|e| backend("create the export directory", tmp, e))?;
    // The command is never run; `create` only needs one for images without a CMD.
    let created = run_tool(
        tool,
        &["create", image, "/openshell-export"],
        "create a container to export",
    )
    .await?;
    let container = created.trim().to_string();
    let tar = tmp.join("rootfs.tar");
    let exported = run_tool(
        tool,
        &["export", "-o", &tar.to_string_lossy(), &container],
        "export the image",
    )
    .await;
    let _ = run_tool(
        tool,
        &["rm", "-f", &container],
        "remove the export container",
    )
    .await;
    exported?;
    run_tool(
        "tar",
        &[
            "-xf",
            &tar.to_string_lossy(),
            "-C",
            &tree.to_string_lossy(),
            "--numeric-owner",
        ],
        "unpack the exported image",
    )
    .await?;
    let _ = tokio::fs::remove_file(&tar).await;
    Ok(())
}

fn image_tool_hint(tool: &str) -> &'static str {
    if tool == "podman" {
        "install podman (apt-get install -y podman)"
    } else {
        "start the Docker daemon (`dockerd &`); the VM driver exports sandbox images from it"
    }
}

fn backend(op: &str, path: &Path, e: std::io::Error) -> DriverError {
    DriverError::Backend {
        runtime: "vm".into(),
        op: format!("{op} ({})", path.display()),
        message: e.to_string(),
    }
}
