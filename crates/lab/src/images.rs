//! An OCI registry on the host's 127.0.0.1 for the node's containers, reached from the guest
//! as 10.0.2.2 through QEMU's user network (plain HTTP: `gridos.plain_http=10.0.2.2:PORT`),
//! serving a busybox image built here from the host's static busybox (Debian's
//! `docker-registry` and `busybox-static`). The end-to-end test and `make run` both use it.

use anyhow::Context;

/// The running registry (stopped when dropped) and what it serves.
pub struct Images {
    reg: test_infra::oci::OciRegistry,
    /// The port, for `gridos.plain_http=10.0.2.2:PORT`.
    pub port: u16,
    /// The image as the guest names it.
    pub busybox: String,
}

/// Starts the registry on a free port and pushes `gridos/busybox:1` (no entrypoint, command
/// `sh`).
pub async fn start() -> anyhow::Result<Images> {
    let find = |p: &str| {
        test_infra::gate::find_program(p).ok_or_else(|| anyhow::anyhow!(hosttools::missing(p)))
    };
    let (bin, busybox) = (find("docker-registry")?, find("busybox")?);
    let reg = test_infra::oci::OciRegistry::start(&bin)?;
    let layer = test_infra::oci::busybox_layer(&busybox)?;
    let pushed = reg
        .push(
            "gridos/busybox:1",
            vec![layer],
            test_infra::oci::config(&[], &["sh"]),
        )
        .await
        .map_err(|e| anyhow::anyhow!(e))?;
    let port: u16 = reg
        .addr
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .context("the OCI registry's port")?;
    let busybox = pushed.replacen(&reg.addr, &format!("10.0.2.2:{port}"), 1);
    Ok(Images { reg, port, busybox })
}

impl Images {
    /// Pushes `gridos/tinyvm:1`: the tiny guest (Debian's kernel and a busybox initrd that
    /// reads its cloud-init seed, `test_infra::guest`) as `boot/vmlinuz` and
    /// `boot/initrd.img`, the layout a `vm` workload boots. Returns the image as the guest
    /// names it.
    pub async fn push_vm(&self) -> anyhow::Result<String> {
        let guest = test_infra::guest::guest().map_err(|e| anyhow::anyhow!(e))?;
        let kernel = std::fs::read(&guest.kernel)
            .with_context(|| format!("reading {}", guest.kernel.display()))?;
        let initrd = std::fs::read(&guest.initrd)
            .with_context(|| format!("reading {}", guest.initrd.display()))?;
        let boot = test_infra::oci::layer(&[
            ("boot/", b""),
            ("boot/vmlinuz", &kernel),
            ("boot/initrd.img", &initrd),
        ])?;
        let pushed = self
            .reg
            .push(
                "gridos/tinyvm:1",
                vec![boot],
                test_infra::oci::config(&[], &[]),
            )
            .await
            .map_err(|e| anyhow::anyhow!(e))?;
        Ok(pushed.replacen(&self.reg.addr, &format!("10.0.2.2:{}", self.port), 1))
    }

    /// The registry for the kernel command line's `gridos.plain_http=`.
    pub fn plain_http(&self) -> String {
        format!("gridos.plain_http=10.0.2.2:{}", self.port)
    }
}
