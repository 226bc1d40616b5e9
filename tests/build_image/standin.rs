//! The stand-ins for Istio's build used by tests/build_image.rs: Makefiles whose
//! `docker.proxyv2` behaves like Istio's towards mosnctl's variables, and a stand-in
//! build-tools container image.

use std::path::Path;
use std::process::Command;

use super::image_harness::Dockerd;

/// The stand-in for Istio's Makefile: `clean` and a `docker.proxyv2` that behaves like
/// Istio's towards the variables (see the module comment).
pub const STANDIN_MAKEFILE: &[&str] = &[
    "# Stand-in for Istio's Makefile, written by tests/build_image.rs.",
    "SHELL := /bin/bash",
    ".PHONY: clean docker.proxyv2",
    "clean:",
    "\techo clean >> order.txt",
    "\trm -rf out",
    "docker.proxyv2:",
    "\techo docker.proxyv2 >> order.txt",
    "\tgrep -q '^# COPY stats-filter.wasm' pilot/docker/Dockerfile.proxyv2",
    "\tenv | sort > env.txt",
    "\techo '$(MAKEFLAGS)' > makeflags.txt",
    "\tmkdir -p out/ctx out/centos",
    "\tcurl -fLSs \"$(ISTIO_ENVOY_RELEASE_URL)\" | tar xz -C out/ctx",
    "\tcurl -fLSs \"$(ISTIO_ENVOY_CENTOS_RELEASE_URL)\" | tar xz -C out/centos",
    "\tcp out/ctx/usr/local/bin/$(SIDECAR) out/ctx/$(SIDECAR)",
    "\tprintf 'FROM scratch\\nCOPY $(SIDECAR) /usr/local/bin/$(SIDECAR)\\n' > out/ctx/Dockerfile",
    "\tDOCKER_BUILDKIT=0 docker build -q -t $(HUB)/proxyv2:$(TAG) out/ctx",
];

/// A stand-in `docker.proxyv2` that fails after printing 50 lines.
pub const FAILING_MAKEFILE: &[&str] = &[
    "clean:",
    "\t@true",
    "docker.proxyv2:",
    "\t@for i in $$(seq 1 50); do echo \"line $$i\"; done",
    "\t@echo 'No rule to make target stats-filter.wasm' >&2; exit 3",
];

/// A stand-in `docker.proxyv2` that records its environment, starts a long `sleep` in make's
/// process group and a stand-in build container whose docker CLI does not forward signals
/// (`--sig-proxy=false`, so only mosnctl's clean-up can stop it), and waits.
pub const HANGING_MAKEFILE: &[&str] = &[
    "clean:",
    "\t@true",
    "docker.proxyv2:",
    "\tenv | sort > env.txt",
    "\tdocker run --rm --sig-proxy=false --net=host $(STANDIN_BUILD_TOOLS) & \\",
    "\tsleep 300 & echo $$! > sleep.pid; wait",
];

/// The stand-in build-tools image: a static program that waits for a signal. Its name starts
/// like Istio's (`gcr.io/istio-testing/build-tools`), which is how mosnctl recognises it.
pub const STANDIN_BUILD_TOOLS: &str = "gcr.io/istio-testing/build-tools:stand-in";

/// Build [`STANDIN_BUILD_TOOLS`] in `dockerd`, using `dir` as the build context.
pub fn build_standin_build_tools(dockerd: &Dockerd, dir: &Path) {
    std::fs::write(
        dir.join("pause.c"),
        "#include <unistd.h>\nint main(void){pause();return 0;}\n",
    )
    .unwrap();
    let gcc = Command::new("gcc")
        .args(["-static", "-O2", "-o"])
        .arg(dir.join("pause"))
        .arg(dir.join("pause.c"))
        .status()
        .expect("gcc is installed");
    assert!(gcc.success());
    std::fs::write(
        dir.join("Dockerfile"),
        "FROM scratch\nCOPY pause /pause\nENTRYPOINT [\"/pause\"]\n",
    )
    .unwrap();
    let built = Command::new("docker")
        .args(["build", "-q", "-t", STANDIN_BUILD_TOOLS])
        .arg(dir)
        .env("DOCKER_HOST", dockerd.host())
        .env("DOCKER_BUILDKIT", "0")
        .status()
        .unwrap();
    assert!(built.success());
}

/// Ids of the running containers.
pub fn running_containers(dockerd: &Dockerd) -> Vec<String> {
    dockerd
        .api("/containers/json")
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["Id"].as_str().unwrap().to_string())
        .collect()
}

/// Write `lines` as the checkout's Makefile.
pub fn write_makefile(dir: &Path, lines: &[&str]) {
    std::fs::write(dir.join("Makefile"), lines.join("\n") + "\n").unwrap();
}
