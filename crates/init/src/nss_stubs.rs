//! Name-service stubs linked into the static init binary only.
//!
//! A node has no `/etc/passwd`, no `/etc/group` and never resolves host names
//! from PID 1, so glibc's answers to these calls would be "not found" anyway.
//! Defining them here keeps glibc's NSS, resolver, `dlopen` and iconv machinery
//! out of the static binary (they are pulled in only through these symbols, by
//! zbus's peer-credential lookup and by TCP address resolution init never uses).
//! If glibc code still needed its own definitions the link would fail with a
//! duplicate symbol, so this cannot silently misbehave.

/// Host name resolution: always fails (init only uses unix sockets).
#[no_mangle]
pub extern "C" fn getaddrinfo(
    _node: *const libc::c_char,
    _service: *const libc::c_char,
    _hints: *const libc::addrinfo,
    _res: *mut *mut libc::addrinfo,
) -> libc::c_int {
    libc::EAI_FAIL
}

/// Pairs with `getaddrinfo`, which never allocates a result.
#[no_mangle]
pub extern "C" fn freeaddrinfo(_res: *mut libc::addrinfo) {}

/// User lookup: "no such user" (the initramfs has no user database).
///
/// # Safety
/// Called by C code with a valid `result` pointer, as `getpwuid_r(3)` requires.
#[no_mangle]
pub unsafe extern "C" fn getpwuid_r(
    _uid: libc::uid_t,
    _pwd: *mut libc::passwd,
    _buf: *mut libc::c_char,
    _len: libc::size_t,
    result: *mut *mut libc::passwd,
) -> libc::c_int {
    if !result.is_null() {
        // SAFETY: the caller passes a pointer to writable storage for the result.
        unsafe { *result = std::ptr::null_mut() };
    }
    0
}

/// Group list lookup: fails, as for an unknown user.
#[no_mangle]
pub extern "C" fn getgrouplist(
    _user: *const libc::c_char,
    _group: libc::gid_t,
    _groups: *mut libc::gid_t,
    _ngroups: *mut libc::c_int,
) -> libc::c_int {
    -1
}
