//! Virtual machines for twins, one QEMU process each: the command line from a spec
//! ([`qemu`]), QMP to drive it ([`qmp`]), whether KVM really works here ([`accel`]), the
//! cloud-init NoCloud seed that gives the guest its keys, name and address ([`seed`]), and
//! the process itself: started paused, resumed, stopped by the power button, killed after a
//! grace period ([`Vm`]), and the disk images a guest may boot from ([`disk`]). When a
//! cloud-hypervisor binary is present and KVM works, it runs the VM instead, driven through
//! its REST API ([`chv`], [`chv_api`]). See docs/vms.md.

pub mod accel;
pub mod chv;
pub mod chv_api;
pub mod disk;
pub mod qemu;
pub mod qmp;
pub mod seed;
mod vm;

pub use chv::CloudHypervisor;
pub use chv_api::{Api, ApiError};
pub use disk::{DiskError, DiskImage, ImageFormat};
pub use qemu::{Accel, Boot, Disk, Format, Nic, Qemu, Spec, SpecError};
pub use qmp::{Qmp, QmpError, Status};
pub use seed::{Seed, SeedError};
pub use vm::{Stopped, Vm, VmError};
