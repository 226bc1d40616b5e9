//! The engine steps of `build-image`, through bollard: check that make produced an image with
//! an executable `/usr/local/bin/mosn`, add tags, and push. Connecting, credentials and the
//! push itself are the overlay code's (`crate::image::engine`), not repeated here.

use anyhow::{bail, Context, Result};
use bollard::models::ContainerCreateBody;
use bollard::query_parameters as q;
use bollard::Docker;
use futures_util::StreamExt;

use crate::image::reference::Reference;

/// The image Istio's `common/scripts/run.sh` runs make in (the tag varies by release).
pub const BUILD_TOOLS: &str = "gcr.io/istio-testing/build-tools";

/// Where Istio's Dockerfile puts the sidecar for `SIDECAR=mosn`.
pub const MOSN_PATH: &str = "/usr/local/bin/mosn";

/// What the verification found.
#[derive(Debug, Clone)]
pub struct Verified {
    /// Engine image id.
    pub id: String,
    /// Mode bits of `/usr/local/bin/mosn`.
    pub mode: u32,
    /// Its size in bytes.
    pub size: u64,
}

/// Check that `image` exists and holds an executable regular file at [`MOSN_PATH`], by
/// copying it out of a created (never started) container: no runtime or network needed.
pub async fn verify(docker: &Docker, image: &str) -> Result<Verified> {
    let inspected = docker.inspect_image(image).await.with_context(|| {
        format!(
            "make finished, but the engine has no image {image}\n\n\
             help: make docker.proxyv2 tags HUB/proxyv2:TAG; check HUB and TAG, and that make \
             used the same engine (DOCKER_HOST) as mosnctl"
        )
    })?;
    let id = inspected.id.unwrap_or_default();
    let body = ContainerCreateBody {
        image: Some(image.to_string()),
        // Images without a shell or entrypoint (FROM scratch) still need a command to create.
        cmd: Some(vec![MOSN_PATH.to_string()]),
        network_disabled: Some(true),
        ..Default::default()
    };
    let container = docker
        .create_container(None::<q::CreateContainerOptions>, body)
        .await
        .with_context(|| format!("cannot create a container from {image} to inspect it"))?
        .id;
    let copied = copy_out(docker, &container).await;
    crate::image::engine::remove_container(docker, &container).await;
    let (mode, size) = copied?;
    if mode & 0o111 == 0 {
        bail!("{MOSN_PATH} in {image} is not executable (mode {mode:o})");
    }
    if size == 0 {
        bail!("{MOSN_PATH} in {image} is empty");
    }
    Ok(Verified { id, mode, size })
}

/// Mode and size of [`MOSN_PATH`] from the container's archive API.
async fn copy_out(docker: &Docker, container: &str) -> Result<(u32, u64)> {
    let mut stream = docker.download_from_container(
        container,
        Some(q::DownloadFromContainerOptions {
            path: MOSN_PATH.to_string(),
        }),
    );
    let mut tar_bytes = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = match chunk {
            Ok(c) => c,
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => bail!(
                "the image has no {MOSN_PATH}\n\n\
                 help: make docker.proxyv2 did not use SIDECAR=mosn; on Istio 1.14 or later it \
                 cannot (tools/docker-builder hard-codes envoy): use `mosnctl overlay`"
            ),
            Err(e) => return Err(e).context(format!("cannot copy {MOSN_PATH} out of the image")),
        };
        tar_bytes.extend_from_slice(&chunk);
    }
    let mut archive = tar::Archive::new(&tar_bytes[..]);
    let mut entries = archive
        .entries()
        .context("unreadable archive from the engine")?;
    let entry = entries
        .next()
        .context("empty archive from the engine")?
        .context("unreadable archive from the engine")?;
    let header = entry.header();
    if !header.entry_type().is_file() {
        bail!(
            "{MOSN_PATH} is not a regular file ({:?})",
            header.entry_type()
        );
    }
    Ok((header.mode()?, header.size()?))
}

/// Tag `image` as `target` in the engine.
pub async fn retag(docker: &Docker, image: &str, target: &Reference) -> Result<()> {
    let familiar = target.familiar();
    let (repo, tag) = familiar
        .rsplit_once(':')
        .expect("familiar names carry a tag");
    docker
        .tag_image(
            image,
            Some(q::TagImageOptions {
                repo: Some(repo.to_string()),
                tag: Some(tag.to_string()),
            }),
        )
        .await
        .with_context(|| format!("cannot tag {image} as {familiar}"))
}

/// Push with the overlay code's push (credentials from docker's config.json and helpers).
pub async fn push(docker: &Docker, target: &Reference) -> Result<String> {
    crate::image::engine::push(docker, target).await
}

/// After an interrupt: kill build-tools containers created since `since` (unix seconds).
/// The docker CLI normally forwards the SIGTERM to its container, but one that outlived the
/// grace period (or runs with --sig-proxy=false) would keep building. Best effort: returns
/// the short ids of the containers killed.
pub async fn kill_build_containers(since: i64) -> Vec<String> {
    let Ok(docker) = crate::image::engine::connect().await else {
        return Vec::new();
    };
    let running = docker
        .list_containers(None::<q::ListContainersOptions>)
        .await
        .unwrap_or_default();
    let mut killed = Vec::new();
    for c in running {
        let ours = c
            .image
            .as_deref()
            .is_some_and(|i| i.starts_with(BUILD_TOOLS))
            && c.created.unwrap_or(0) >= since;
        let Some(id) = c.id.filter(|_| ours) else {
            continue;
        };
        if docker
            .kill_container(&id, None::<q::KillContainerOptions>)
            .await
            .is_ok()
        {
            killed.push(id.chars().take(12).collect());
        }
    }
    killed
}
