//! A tiny Linux guest for the VM tests: Debian's kernel (downloaded, never installed) and an
//! initrd of busybox whose `/init` reads the cloud-init NoCloud seed the way cloud-init's
//! NoCloud data source does (the disk labelled `CIDATA`; `meta-data`, `user-data`,
//! `network-config`), applies the host name, keys and address, and reports each step on the
//! serial console. A real cloud-init image needs a whole distribution, far too slow to boot
//! under nested TCG; what the driver writes is the same either way.
//!
//! Console lines the tests wait for: `guest: up`, `cloud-init: ran …`, `guest: disks
//! vda:SECTORS …` (its virtio disks, in 512-byte sectors), `guest: ready`,
//! `guest: power button`, `guest: gateway … answers`. With a network, the guest serves its
//! host name over HTTP on port 80 (busybox httpd). `gridos.ignore_powerdown` on the kernel command line leaves the
//! power button unanswered (the kill-on-timeout case).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// A guest ready to boot.
#[derive(Debug, Clone)]
pub struct Guest {
    /// The kernel image.
    pub kernel: PathBuf,
    /// The initrd.
    pub initrd: PathBuf,
    /// `uname -r` of the kernel.
    pub release: String,
}

/// The kernel command line the guest expects.
pub const CMDLINE: &str = "console=ttyS0 quiet panic=-1";

const MODULES: [&str; 9] = [
    "virtio_pci",
    "virtio_blk",
    "virtio_net",
    "vfat",
    "nls_cp437",
    "nls_ascii",
    "button",
    "evdev",
    "af_packet",
];

const INIT: &str = r#"#!/bin/sh
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in MODULES; do modprobe "$m" 2>/dev/null; done
echo "guest: up"
seed=""
i=0
while [ $i -lt 100 ]; do
    seed=$(findfs LABEL=CIDATA 2>/dev/null) && break
    seed=$(findfs LABEL=cidata 2>/dev/null) && break
    sleep 0.1; i=$((i+1))
done
field() { sed -n "s/^ *\"$1\": *\"\([^\"]*\)\".*/\1/p" "$2" | head -n1; }
if [ -n "$seed" ] && mkdir -p /seed && mount -t vfat -o ro "$seed" /seed; then
    id=$(field instance-id /seed/meta-data)
    host=$(field local-hostname /seed/meta-data)
    [ -n "$host" ] && hostname "$host"
    mkdir -p /root/.ssh
    grep -o '"\(ssh-[a-z0-9]*\|ecdsa-[a-z0-9-]*\|sk-ssh-ed25519@openssh.com\) [^"]*"' /seed/user-data \
        | tr -d '"' > /root/.ssh/authorized_keys
    keys=$(grep -c . /root/.ssh/authorized_keys)
    head -n 1 /seed/user-data | grep -q '^#cloud-config$' || echo "cloud-init: user-data is not #cloud-config"
    net="none"
    if [ -f /seed/network-config ]; then
        mac=$(field macaddress /seed/network-config)
        addr=$(sed -n '/"addresses": \[/{n;s/^ *"\([^"]*\)".*/\1/p;}' /seed/network-config | head -n1)
        gw=$(field via /seed/network-config)
        dev=""
        for d in /sys/class/net/*; do
            [ "$(cat "$d/address" 2>/dev/null)" = "$mac" ] && dev=${d##*/}
        done
        if [ -n "$dev" ]; then
            ip link set "$dev" name eth0 2>/dev/null
            ip link set eth0 up
            ip addr add "$addr" dev eth0
            ip route add default via "$gw"
            net="eth0=$addr,gw=$gw"
            # In the background: a twin's gateway (the node) drops what is sent to it.
            (
                i=0
                while [ $i -lt 30 ]; do
                    ping -c 1 -W 1 "$gw" >/dev/null 2>&1 && { echo "guest: gateway $gw answers"; break; }
                    i=$((i+1))
                done
            ) &
            # Something for the twin's other workloads to reach: its host name over HTTP.
            mkdir -p /www && hostname > /www/index.html && httpd -p 80 -h /www
        else
            net="no-card-with-$mac"
        fi
    fi
    echo "cloud-init: ran instance-id=$id hostname=$(hostname) ssh_keys=$keys network=$net"
    while read -r k; do echo "cloud-init: key $k"; done < /root/.ssh/authorized_keys
else
    echo "cloud-init: no seed"
fi
disks=""
for b in /sys/block/vd*; do [ -e "$b/size" ] && disks="$disks ${b##*/}:$(cat "$b/size")"; done
echo "guest: disks$disks"
if grep -q gridos.ignore_powerdown /proc/cmdline; then
    echo "guest: ignoring the power button"
else
    # acpid opens the input devices once, when it starts: wait for the power button's.
    i=0
    while [ $i -lt 50 ] && ! ls /dev/input/event* >/dev/null 2>&1; do sleep 0.1; i=$((i+1)); done
    acpid -f -l /dev/console -c /etc/acpi &
    # Ready only once acpid listens: a button pressed before that would be lost.
    i=0
    while [ $i -lt 100 ] && ! ls -l /proc/$!/fd 2>/dev/null | grep -q /dev/input/event; do
        sleep 0.05; i=$((i+1))
    done
fi
echo "guest: ready"
while true; do sleep 3600; done
"#;

const POWER: &str = "#!/bin/sh\necho \"guest: power button\"\nsync\npoweroff -f\n";

const APPLETS: [&str; 22] = [
    "sh", "mount", "modprobe", "echo", "sed", "head", "grep", "tr", "mkdir", "hostname", "ip",
    "cat", "sleep", "findfs", "acpid", "poweroff", "sync", "ping", "cut", "true", "httpd", "ls",
];

fn run(cmd: &mut Command) -> Result<String, String> {
    let show = format!("{cmd:?}");
    let out = cmd.output().map_err(|e| {
        format!(
            "{show}: {}",
            hosttools::spawn_error(&cmd.get_program().to_string_lossy(), e)
        )
    })?;
    if !out.status.success() {
        return Err(format!(
            "{show}: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Downloads and extracts a Debian package into `pkgs/NAME` once.
fn fetch_deb(pkgs: &Path, name: &str) -> Result<PathBuf, String> {
    let dir = pkgs.join(name);
    if dir.is_dir() {
        return Ok(dir);
    }
    std::fs::create_dir_all(pkgs).map_err(|e| format!("{}: {e}", pkgs.display()))?;
    run(Command::new("apt-get")
        .args(["download", name])
        .current_dir(pkgs))?;
    let deb = std::fs::read_dir(pkgs)
        .map_err(|e| e.to_string())?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&format!("{name}_")) && n.ends_with(".deb"))
        })
        .ok_or_else(|| format!("apt-get download {name} left no .deb"))?;
    let tmp = pkgs.join(format!(".{name}.tmp"));
    let _ = std::fs::remove_dir_all(&tmp);
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&tmp))?;
    std::fs::rename(&tmp, &dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    Ok(dir)
}

fn kernel_root(pkgs: &Path) -> Result<PathBuf, String> {
    if let Some(root) = std::env::var_os("GRIDOS_KERNEL_ROOT") {
        return Ok(root.into());
    }
    let resolve = || {
        run(Command::new("apt-cache").args(["depends", "linux-image-amd64"]))
            .ok()
            .and_then(|o| {
                o.lines().find_map(|l| {
                    let d = l.trim().strip_prefix("Depends:")?.trim();
                    d.strip_prefix("linux-image-")?
                        .starts_with(|c: char| c.is_ascii_digit())
                        .then(|| d.to_string())
                })
            })
    };
    let package = match resolve() {
        Some(p) => p,
        None => {
            let _ = run(Command::new("apt-get").args(["update", "-q"]));
            resolve().ok_or("cannot resolve linux-image-amd64 (apt-get update?)")?
        }
    };
    fetch_deb(pkgs, &package)
}

fn build_at(out: &Path) -> Result<Guest, String> {
    let pkgs = out.join("pkgs");
    let kroot = kernel_root(&pkgs)?;
    let release = std::fs::read_dir(kroot.join("lib/modules"))
        .map_err(|e| format!("{}: {e}", kroot.display()))?
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().into_string().ok())
        .find(|r| kroot.join(format!("boot/vmlinuz-{r}")).is_file())
        .ok_or_else(|| format!("no kernel in {}", kroot.display()))?;
    let mods = kroot.join("lib/modules").join(&release);
    if !mods.join("modules.dep").is_file() {
        run(Command::new("depmod").arg("-b").arg(&kroot).arg(&release))?;
    }
    let dep = std::fs::read_to_string(mods.join("modules.dep")).map_err(|e| e.to_string())?;
    let busybox = fetch_deb(&pkgs, "busybox-static")?.join("bin/busybox");

    let root = out.join(format!("root.{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let mk = |p: &Path| std::fs::create_dir_all(p).map_err(|e| format!("{}: {e}", p.display()));
    for d in ["bin", "dev", "proc", "sys", "tmp", "root", "etc/acpi/PWRF"] {
        mk(&root.join(d))?;
    }
    let copy = |from: &Path, to: &Path| {
        std::fs::copy(from, to)
            .map(|_| ())
            .map_err(|e| format!("{} → {}: {e}", from.display(), to.display()))
    };
    copy(&busybox, &root.join("bin/busybox"))?;
    for a in APPLETS {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(a))
            .map_err(|e| e.to_string())?;
    }
    let write_exec = |p: &Path, text: &str| -> Result<(), String> {
        use std::os::unix::fs::PermissionsExt;
        std::fs::write(p, text).map_err(|e| format!("{}: {e}", p.display()))?;
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755))
            .map_err(|e| e.to_string())
    };
    write_exec(
        &root.join("init"),
        &INIT.replace("MODULES", &MODULES.join(" ")),
    )?;
    write_exec(&root.join("etc/acpi/PWRF/00000080"), POWER)?;
    // The wanted modules and what they depend on, by modules.dep.
    let mut want: Vec<String> = Vec::new();
    for m in MODULES {
        let line = dep.lines().find(|l| {
            let head = l.split(':').next().unwrap_or("");
            let name = head
                .rsplit('/')
                .next()
                .unwrap_or("")
                .trim_end_matches(".ko");
            name.replace('-', "_") == m
        });
        let Some(line) = line else {
            // Built into this kernel, or not there at all: modprobe says which at boot.
            continue;
        };
        want.extend(
            line.replace(':', " ")
                .split_whitespace()
                .map(str::to_string),
        );
    }
    want.sort();
    want.dedup();
    let mroot = root.join("lib/modules").join(&release);
    for rel in &want {
        let to = mroot.join(rel);
        mk(to.parent().unwrap_or(&mroot))?;
        copy(&mods.join(rel), &to)?;
    }
    for f in ["modules.dep", "modules.builtin", "modules.alias"] {
        if mods.join(f).is_file() {
            copy(&mods.join(f), &mroot.join(f))?;
        }
    }
    let initrd = out.join("initrd.img");
    let tmp = out.join(format!("initrd.img.{}", std::process::id()));
    run(Command::new("sh").arg("-c").arg(format!(
        "cd '{}' && find . | cpio -o -H newc --quiet | gzip -1 > '{}'",
        root.display(),
        tmp.display()
    )))?;
    std::fs::rename(&tmp, &initrd).map_err(|e| e.to_string())?;
    let _ = std::fs::remove_dir_all(&root);
    Ok(Guest {
        kernel: kroot.join(format!("boot/vmlinuz-{release}")),
        initrd,
        release,
    })
}

/// The guest, built once per test process under the repository's `build/vm-guest` (or
/// `GRIDOS_VM_GUEST_DIR`); packages are downloaded once per folder.
pub fn guest() -> Result<Guest, String> {
    static BUILT: OnceLock<Result<Guest, String>> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let out = std::env::var_os("GRIDOS_VM_GUEST_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| {
                    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../build/vm-guest")
                });
            build_at(&out)
        })
        .clone()
}

/// The guest as a bootable raw disk image at `out`, the way a twin ships a VM as a disk: a
/// FAT file system over the whole disk (no partition table) with syslinux in its boot sector,
/// the kernel, the initrd and a `syslinux.cfg` that boots them with [`CMDLINE`]. Made with
/// `mkfs.fat`, `syslinux` and `mcopy` (dosfstools, syslinux, mtools): nothing is mounted.
pub fn disk_image(guest: &Guest, out: &Path) -> Result<(), String> {
    let _ = std::fs::remove_file(out);
    let bytes = std::fs::metadata(&guest.kernel)
        .and_then(|k| Ok(k.len() + std::fs::metadata(&guest.initrd)?.len()))
        .map_err(|e| e.to_string())?;
    // Room for the files, the FAT and syslinux; in KiB, as mkfs.fat counts.
    let kib = (bytes + bytes / 4 + (4 << 20)) / 1024;
    run(Command::new("mkfs.fat")
        .args(["-C", "-n", "TINYVM"])
        .arg(out)
        .arg(kib.to_string()))?;
    run(Command::new("syslinux").arg("--install").arg(out))?;
    let cfg = out.with_extension("cfg");
    std::fs::write(
        &cfg,
        format!(
            "DEFAULT tiny\nLABEL tiny\n  KERNEL vmlinuz\n  INITRD initrd.img\n  APPEND {CMDLINE}\n"
        ),
    )
    .map_err(|e| e.to_string())?;
    for (from, to) in [
        (guest.kernel.as_path(), "::vmlinuz"),
        (guest.initrd.as_path(), "::initrd.img"),
        (cfg.as_path(), "::syslinux.cfg"),
    ] {
        run(Command::new("mcopy").arg("-i").arg(out).arg(from).arg(to))?;
    }
    let _ = std::fs::remove_file(&cfg);
    Ok(())
}
