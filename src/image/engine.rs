//! The engine path, through a Docker (or Podman) engine with bollard: build from the overlay
//! template with an in-memory context, tag, push; load a daemonless docker-archive; and run
//! the smoke test. The API version is always negotiated (Debian's dockerd 20.10 speaks 1.41).

use std::collections::HashMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use bollard::auth::DockerCredentials;
use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters as q;
use bollard::Docker;
use futures_util::StreamExt;

use super::overlay::{locations, Args, Binary, Locations, Outcome};
use super::reference::{Location, Reference};
use super::registry::auth::{self, Secret};

/// The overlay Dockerfile (a template: `{{BINARY_SHA256}}` is filled in).
pub const TEMPLATE: &str = include_str!("../../templates/Dockerfile.overlay");

/// Connect to the engine named by `DOCKER_HOST` (or the default socket) and negotiate.
pub async fn connect() -> Result<Docker> {
    let docker = Docker::connect_with_defaults().context("cannot set up a Docker engine client")?;
    docker.negotiate_version().await.context(
        "cannot reach the Docker engine\n\n\
         help: start dockerd, or point DOCKER_HOST at its socket (e.g. unix:///run/docker.sock); \
         without --engine/--load/--smoke no engine is needed",
    )
}

/// Engine credentials for a registry, from the same config.json lookup as the daemonless path.
fn credentials(registry: &str) -> Option<DockerCredentials> {
    let server = if registry == "docker.io" {
        "https://index.docker.io/v1/".to_string()
    } else {
        registry.to_string()
    };
    match auth::lookup(registry).secret {
        Secret::Basic(u, p) => Some(DockerCredentials {
            username: Some(u),
            password: Some(p),
            serveraddress: Some(server),
            ..Default::default()
        }),
        Secret::IdentityToken(t) => Some(DockerCredentials {
            identitytoken: Some(t),
            serveraddress: Some(server),
            ..Default::default()
        }),
        Secret::Anonymous => None,
    }
}

/// The build context: `Dockerfile` and `mosn` (0755, fixed mtime), as an in-memory tar.
pub fn context_tar(binary: &Binary, mtime: u64) -> Result<Vec<u8>> {
    let dockerfile = TEMPLATE.replace("{{BINARY_SHA256}}", &binary.digest);
    let bin = std::fs::read(&binary.path)
        .with_context(|| format!("cannot read {}", binary.path.display()))?;
    let mut tar = tar::Builder::new(Vec::new());
    for (name, mode, data) in [
        ("Dockerfile", 0o644, dockerfile.as_bytes()),
        ("mosn", 0o755, bin.as_slice()),
    ] {
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_mode(mode);
        h.set_mtime(mtime);
        h.set_uid(0);
        h.set_gid(0);
        h.set_cksum();
        tar.append_data(&mut h, name, data)?;
    }
    Ok(tar.into_inner()?)
}

/// `--engine`: docker build (classic builder), tag, and push when asked.
pub async fn overlay(args: &Args, binaries: &[Binary]) -> Result<Vec<Outcome>> {
    let Locations { base, tag, .. } = locations(args)?;
    let Location::Registry(base) = base else {
        unreachable!("locations() refuses local bases with --engine")
    };
    let [binary] = binaries else {
        bail!("--engine builds one platform; give one --binary");
    };
    let docker = connect().await?;
    let engine_arch = docker
        .version()
        .await
        .ok()
        .and_then(|v| v.arch)
        .unwrap_or_default();
    if !engine_arch.is_empty() && engine_arch != binary.info.oci_arch() {
        bail!(
            "the engine builds for linux/{engine_arch}, but the binary is for linux/{}\n\n\
             help: use the daemonless path, which handles multi-arch bases",
            binary.info.oci_arch()
        );
    }
    let mtime = super::source_date_epoch()?.unwrap_or(0);
    let context = context_tar(binary, mtime)?;
    let name = tag.familiar();
    let mut buildargs = HashMap::new();
    buildargs.insert("BASE", base.to_string());
    // Pull the base unless the engine already has it (a locally built base stays usable).
    let pull = if docker.inspect_image(&base.familiar()).await.is_ok() {
        ""
    } else {
        "1"
    };
    let options = q::BuildImageOptionsBuilder::default()
        .dockerfile("Dockerfile")
        .t(&name)
        .pull(pull)
        .rm(true)
        .forcerm(true)
        .buildargs(&buildargs)
        .version(q::BuilderVersion::BuilderV1)
        .build();
    let creds = credentials(&base.registry).map(|c| {
        let mut m = HashMap::new();
        m.insert(base.registry.clone(), c);
        m
    });
    let spinner = crate::ui::spinner(format!("docker build FROM {base}"));
    let mut stream = docker.build_image(options, creds, Some(bollard::body_full(context.into())));
    let mut image_id = None;
    while let Some(item) = stream.next().await {
        let info = item.context("the engine's build failed")?;
        if let Some(e) = info.error_detail {
            bail!(
                "docker build failed: {}",
                e.message.unwrap_or_else(|| "no message".into())
            );
        }
        if let Some(s) = info.stream {
            tracing::debug!("build: {}", s.trim_end());
        }
        if let Some(id) = info.aux.and_then(|a| a.id) {
            image_id = Some(id);
        }
    }
    spinner.finish_and_clear();
    let image_id = match image_id {
        Some(id) => id,
        None => docker.inspect_image(&name).await?.id.unwrap_or_default(),
    };
    let mut digest = image_id.clone();
    let mut destination = format!("docker engine {name}");
    if args.push {
        digest = push(&docker, &tag).await?;
        destination = tag.to_string();
    }
    Ok(vec![Outcome {
        digest,
        destination,
        platforms: vec![format!("linux/{}", binary.info.oci_arch())],
    }])
}

/// Push a tagged image; errors inside the progress stream fail the push.
pub async fn push(docker: &Docker, tag: &Reference) -> Result<String> {
    let name = tag.familiar();
    let (repo, t) = name.rsplit_once(':').expect("familiar names carry a tag");
    let spinner = crate::ui::spinner(format!("docker push {name}"));
    let mut stream = docker.push_image(
        repo,
        Some(q::PushImageOptions {
            tag: Some(t.to_string()),
            ..Default::default()
        }),
        credentials(&tag.registry),
    );
    let mut digest = None;
    while let Some(item) = stream.next().await {
        let info = item.with_context(|| format!("docker push {name} failed"))?;
        if let Some(e) = info.error_detail {
            bail!(
                "docker push {name} failed: {}",
                e.message.unwrap_or_else(|| "no message".into())
            );
        }
        // The last status reads "<tag>: digest: sha256:... size: N".
        if let Some(s) = info.status {
            if let Some(d) = status_digest(&s) {
                digest = Some(d);
            }
        }
    }
    spinner.finish_and_clear();
    digest.with_context(|| format!("docker push {name} reported no digest"))
}

/// The digest in a push status line (`v1: digest: sha256:<64 hex> size: 528`); `None` for
/// other lines, including truncated ones (slicing blindly would panic on those).
fn status_digest(status: &str) -> Option<String> {
    let i = status.find("digest: sha256:")? + "digest: ".len();
    let d = status.get(i..i + 71)?;
    super::digest_hex(d).ok()?;
    Some(d.to_string())
}

/// Load a docker-archive through the image-load API; checks that the engine's image ends
/// with `diff_id`. Returns the image id.
pub async fn load(file: &Path, name: &str, diff_id: &str) -> Result<String> {
    let docker = connect().await?;
    let bytes = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    let mut stream = docker.import_image(
        q::ImportImageOptions {
            quiet: true,
            ..Default::default()
        },
        bollard::body_full(bytes.into()),
        None,
    );
    while let Some(item) = stream.next().await {
        let info = item.context("docker load failed")?;
        if let Some(e) = info.error_detail {
            bail!(
                "docker load failed: {}",
                e.message.unwrap_or_else(|| "no message".into())
            );
        }
    }
    let img = docker
        .inspect_image(name)
        .await
        .with_context(|| format!("the engine has no {name} after loading"))?;
    let layers = img.root_fs.and_then(|r| r.layers).unwrap_or_default();
    if layers.last().map(String::as_str) != Some(diff_id) {
        bail!("the loaded {name} does not end with the new layer {diff_id}");
    }
    Ok(img.id.unwrap_or_default())
}

/// `--smoke`: run `/usr/local/bin/mosn --version` in `image` with no network; pulls the image
/// first when the engine does not have it.
pub async fn smoke(image: &str, registry: &str) -> Result<String> {
    let docker = connect().await?;
    if docker.inspect_image(image).await.is_err() {
        let mut pull = docker.create_image(
            Some(q::CreateImageOptions {
                from_image: Some(image.to_string()),
                ..Default::default()
            }),
            None,
            credentials(registry),
        );
        while let Some(item) = pull.next().await {
            let info = item.with_context(|| format!("cannot pull {image} for the smoke test"))?;
            // Like push, a failed pull can report its error inside the stream.
            if let Some(e) = info.error_detail {
                bail!(
                    "cannot pull {image} for the smoke test: {}",
                    e.message.unwrap_or_else(|| "no message".into())
                );
            }
        }
    }
    let body = ContainerCreateBody {
        image: Some(image.to_string()),
        entrypoint: Some(vec!["/usr/local/bin/mosn".into()]),
        cmd: Some(vec!["--version".into()]),
        network_disabled: Some(true),
        host_config: Some(HostConfig {
            network_mode: Some("none".into()),
            ..Default::default()
        }),
        ..Default::default()
    };
    let id = docker
        .create_container(None::<q::CreateContainerOptions>, body)
        .await
        .with_context(|| format!("cannot create a smoke-test container from {image}"))?
        .id;
    // Ctrl-C must not leave the container behind (it may not exit on its own if the binary
    // hangs), so the removal below also runs after an interrupt.
    let result = tokio::select! {
        r = run_and_collect(&docker, &id) => r,
        _ = crate::ui::interrupted() => Err(anyhow::anyhow!(
            "interrupted during the smoke test; its container was removed"
        )),
    };
    remove_container(&docker, &id).await;
    let (code, output) = result?;
    if code != 0 {
        bail!(
            "smoke test failed: /usr/local/bin/mosn --version exited with {code} in {image}:\n{output}"
        );
    }
    Ok(output)
}

/// Remove a container, forced; best effort, as cleanup after a run or an inspection.
pub async fn remove_container(docker: &Docker, id: &str) {
    let options = q::RemoveContainerOptions {
        force: true,
        ..Default::default()
    };
    if let Err(e) = docker.remove_container(id, Some(options)).await {
        tracing::debug!("cannot remove container {id}: {e}");
    }
}

async fn run_and_collect(docker: &Docker, id: &str) -> Result<(i64, String)> {
    docker
        .start_container(id, None::<q::StartContainerOptions>)
        .await
        .context("cannot start the smoke-test container")?;
    let mut code = 0;
    let mut wait = docker.wait_container(id, None::<q::WaitContainerOptions>);
    while let Some(r) = wait.next().await {
        match r {
            Ok(w) => code = w.status_code,
            // bollard reports a non-zero exit as an error carrying the code.
            Err(bollard::errors::Error::DockerContainerWaitError { code: c, .. }) => code = c,
            Err(e) => return Err(e).context("waiting for the smoke-test container failed"),
        }
    }
    let mut logs = docker.logs(
        id,
        Some(q::LogsOptions {
            stdout: true,
            stderr: true,
            ..Default::default()
        }),
    );
    let mut output = String::new();
    while let Some(chunk) = logs.next().await {
        output.push_str(&chunk?.to_string());
    }
    Ok((code, output))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn push_status_digest() {
        let d = format!("sha256:{}", "ab".repeat(32));
        assert_eq!(
            status_digest(&format!("v1: digest: {d} size: 528")),
            Some(d.clone())
        );
        assert_eq!(status_digest("v1: digest: sha256:abc"), None);
        assert_eq!(status_digest("Pushed"), None);
    }
}
