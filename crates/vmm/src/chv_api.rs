//! cloud-hypervisor's REST API on its unix socket (`--api-socket`): HTTP/1.1, one request
//! per connection, JSON bodies. The request is written by hand (a method, a path and a
//! body); the answer is parsed by `httparse` and read no further than its `Content-Length`,
//! within [`MAX_ANSWER`] bytes and a timeout on every read and write, so a hung or hostile
//! peer cannot hang or flood its driver.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::qmp::Status;

/// The most bytes an answer (head and body) may have: `vm.info` of a large VM is a few KiB.
pub const MAX_ANSWER: usize = 1 << 20;
/// The most header lines an answer may have.
const MAX_HEADERS: usize = 32;

/// Why an API call failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The socket could not be reached.
    #[error("connecting to cloud-hypervisor's API at {path}: {source}")]
    Connect {
        /// The socket.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The exchange broke off or timed out.
    #[error("cloud-hypervisor {endpoint}: {source}")]
    Io {
        /// The endpoint called.
        endpoint: &'static str,
        /// Why.
        source: std::io::Error,
    },
    /// cloud-hypervisor refused the call; its own words follow.
    #[error("cloud-hypervisor {endpoint} answered {status}: {body}")]
    Refused {
        /// The endpoint called.
        endpoint: &'static str,
        /// The HTTP status.
        status: u16,
        /// Its error text.
        body: String,
    },
    /// The answer is not HTTP as cloud-hypervisor speaks it.
    #[error("cloud-hypervisor {endpoint}: malformed answer: {why}")]
    Malformed {
        /// The endpoint called.
        endpoint: &'static str,
        /// What is wrong with it.
        why: String,
    },
}

/// A client of one cloud-hypervisor process's API.
#[derive(Debug, Clone)]
pub struct Api {
    socket: PathBuf,
    timeout: Duration,
}

/// The methods this client uses.
#[derive(Debug, Clone, Copy)]
enum Method {
    Get,
    Put,
}

impl Api {
    /// A client for the socket at `socket`; each read and write gives up after `timeout`.
    pub fn new(socket: impl Into<PathBuf>, timeout: Duration) -> Api {
        Api {
            socket: socket.into(),
            timeout,
        }
    }

    /// The socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Whether the VMM answers (its version, as it says it).
    pub fn ping(&self) -> Result<String, ApiError> {
        let v = self.call(Method::Get, "vmm.ping", None)?;
        Ok(v.as_ref()
            .and_then(|v| v.get("version"))
            .and_then(|v| v.as_str())
            .unwrap_or("unknown")
            .to_string())
    }

    /// Creates the VM from its configuration ([`crate::chv::config`]); nothing runs yet.
    pub fn create(&self, config: &serde_json::Value) -> Result<(), ApiError> {
        self.call(Method::Put, "vm.create", Some(config)).map(drop)
    }

    /// Makes the devices (the tap among them) and starts the vCPUs.
    pub fn boot(&self) -> Result<(), ApiError> {
        self.call(Method::Put, "vm.boot", None).map(drop)
    }

    /// Stops the vCPUs.
    pub fn pause(&self) -> Result<(), ApiError> {
        self.call(Method::Put, "vm.pause", None).map(drop)
    }

    /// Lets a paused guest run.
    pub fn resume(&self) -> Result<(), ApiError> {
        self.call(Method::Put, "vm.resume", None).map(drop)
    }

    /// Presses the ACPI power button.
    pub fn power_button(&self) -> Result<(), ApiError> {
        self.call(Method::Put, "vm.power-button", None).map(drop)
    }

    /// The guest's run state, in QMP's words so both drivers report alike.
    pub fn status(&self) -> Result<Status, ApiError> {
        let info = self.call(Method::Get, "vm.info", None)?;
        let state = info
            .as_ref()
            .and_then(|v| v.get("state"))
            .and_then(|s| s.as_str())
            .ok_or_else(|| ApiError::Malformed {
                endpoint: "vm.info",
                why: "no state in the answer".into(),
            })?;
        Ok(status_of(state))
    }

    /// One request on a connection of its own; the answer's JSON body when it has one.
    fn call(
        &self,
        method: Method,
        endpoint: &'static str,
        body: Option<&serde_json::Value>,
    ) -> Result<Option<serde_json::Value>, ApiError> {
        let connect = |source| ApiError::Connect {
            path: self.socket.clone(),
            source,
        };
        let mut s = UnixStream::connect(&self.socket).map_err(connect)?;
        s.set_read_timeout(Some(self.timeout)).map_err(connect)?;
        s.set_write_timeout(Some(self.timeout)).map_err(connect)?;
        let io = |source| ApiError::Io { endpoint, source };
        let body = match body {
            Some(b) => serde_json::to_vec(b).map_err(|e| io(std::io::Error::other(e)))?,
            None => Vec::new(),
        };
        s.write_all(&request(method, endpoint, &body)).map_err(io)?;
        let (status, text) = read_answer(&mut s, endpoint)?;
        if !(200..300).contains(&status) {
            return Err(ApiError::Refused {
                endpoint,
                status,
                body: readable(&text),
            });
        }
        if text.iter().all(u8::is_ascii_whitespace) {
            return Ok(None);
        }
        serde_json::from_slice(&text)
            .map(Some)
            .map_err(|e| ApiError::Malformed {
                endpoint,
                why: format!("body is not JSON: {e}"),
            })
    }
}

/// The most of an error answer an error quotes.
const MAX_QUOTE: usize = 2048;

/// cloud-hypervisor's error answer (a JSON list, outermost error first) as one line.
fn readable(text: &[u8]) -> String {
    let line = match serde_json::from_slice::<Vec<String>>(text) {
        Ok(chain) => chain.join(": "),
        Err(_) => String::from_utf8_lossy(text).trim().to_string(),
    };
    match line.char_indices().nth(MAX_QUOTE) {
        Some((at, _)) => format!("{}…", &line[..at]),
        None => line,
    }
}

/// QMP's name for cloud-hypervisor's VM state.
fn status_of(state: &str) -> Status {
    let (running, state) = match state {
        "Running" => (true, "running"),
        "Paused" => (false, "paused"),
        "Created" => (false, "prelaunch"),
        "Shutdown" => (false, "shutdown"),
        "BreakPoint" => (false, "debug"),
        other => {
            return Status {
                running: false,
                state: other.to_ascii_lowercase(),
            }
        }
    };
    Status {
        running,
        state: state.into(),
    }
}

fn request(method: Method, endpoint: &str, body: &[u8]) -> Vec<u8> {
    let method = match method {
        Method::Get => "GET",
        Method::Put => "PUT",
    };
    let mut r = format!(
        "{method} /api/v1/{endpoint} HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\n\
         Connection: close\r\n"
    );
    if !body.is_empty() {
        r.push_str("Content-Type: application/json\r\n");
    }
    r.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    let mut r = r.into_bytes();
    r.extend_from_slice(body);
    r
}

/// Reads one answer: its status and body. The body ends at `Content-Length`; without one,
/// at the end of the stream.
fn read_answer(s: &mut impl Read, endpoint: &'static str) -> Result<(u16, Vec<u8>), ApiError> {
    let malformed = |why: String| ApiError::Malformed { endpoint, why };
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        let n = s
            .read(&mut chunk)
            .map_err(|source| ApiError::Io { endpoint, source })?;
        if n == 0 {
            return Err(malformed(format!(
                "the connection closed after {} bytes, before the end of the head",
                buf.len()
            )));
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut answer = httparse::Response::new(&mut headers);
        let head = match answer.parse(&buf) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) if buf.len() < MAX_ANSWER => continue,
            Ok(httparse::Status::Partial) => {
                return Err(malformed(format!("a head longer than {MAX_ANSWER} bytes")))
            }
            Err(e) => return Err(malformed(e.to_string())),
        };
        let status = answer.code.unwrap_or(0);
        let mut length = None;
        for h in answer.headers.iter() {
            if h.name.eq_ignore_ascii_case("content-length") {
                let n = std::str::from_utf8(h.value)
                    .ok()
                    .and_then(|v| v.trim().parse::<usize>().ok())
                    .ok_or_else(|| {
                        malformed(format!(
                            "Content-Length {:?}",
                            String::from_utf8_lossy(h.value)
                        ))
                    })?;
                if length.is_some_and(|l| l != n) {
                    return Err(malformed("two different Content-Length headers".into()));
                }
                length = Some(n);
            } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                return Err(malformed("a transfer encoding (it sends none)".into()));
            }
        }
        if length.is_some_and(|l| l > MAX_ANSWER - head) {
            return Err(malformed(format!(
                "a body of {} bytes, more than the {MAX_ANSWER} bytes allowed",
                length.unwrap_or(0)
            )));
        }
        // 204 and 304 have no body by definition (cloud-hypervisor sends 204 with no length
        // on a connection it keeps open: reading on would wait for the timeout).
        if status == 204 || status == 304 || (100..200).contains(&status) {
            return Ok((status, Vec::new()));
        }
        let mut body = buf.split_off(head);
        // Without a length the body ends with the stream, and may not pass the bound.
        let bound = MAX_ANSWER - head;
        loop {
            match length {
                Some(want) if body.len() >= want => {
                    // Anything beyond the length is not part of this answer.
                    body.truncate(want);
                    return Ok((status, body));
                }
                None if body.len() > bound => {
                    return Err(malformed(format!("more than {MAX_ANSWER} bytes")))
                }
                _ => {}
            }
            let n = s
                .read(&mut chunk)
                .map_err(|source| ApiError::Io { endpoint, source })?;
            if n == 0 {
                return match length {
                    None => Ok((status, body)),
                    Some(want) => Err(malformed(format!(
                        "the body ended after {} of {want} bytes",
                        body.len()
                    ))),
                };
            }
            body.extend_from_slice(&chunk[..n]);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn answer(bytes: &[u8]) -> Result<(u16, Vec<u8>), ApiError> {
        read_answer(&mut &bytes[..], "vm.info")
    }

    #[test]
    fn requests_carry_the_path_and_the_exact_body_length() {
        let r = request(Method::Put, "vm.create", b"{\"a\":1}");
        let text = String::from_utf8(r).unwrap();
        assert!(text.starts_with("PUT /api/v1/vm.create HTTP/1.1\r\n"));
        assert!(text.contains("Content-Length: 7\r\n\r\n{\"a\":1}"));
        let r = String::from_utf8(request(Method::Get, "vm.info", b"")).unwrap();
        assert!(r.ends_with("Content-Length: 0\r\n\r\n") && !r.contains("Content-Type"));
    }

    #[test]
    fn answers_are_read_to_their_length_and_no_further() {
        let (s, b) =
            answer(b"HTTP/1.1 200 OK\r\nContent-Length: 17\r\n\r\n{\"state\":\"Paused\"}").unwrap();
        assert_eq!((s, b.as_slice()), (200, &b"{\"state\":\"Paused\""[..]));
        // As cloud-hypervisor answers: no length, the connection kept open.
        let (s, b) = answer(
            b"HTTP/1.1 204 \r\nServer: Cloud Hypervisor API\r\nConnection: keep-alive\r\n\r\n",
        )
        .unwrap();
        assert_eq!((s, b.len()), (204, 0));
    }

    #[test]
    fn malformed_and_oversized_answers_are_refused() {
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (b"SSH-2.0-OpenSSH\r\n\r\n".to_vec(), "malformed"),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n".to_vec(),
                "Content-Length",
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999\r\n\r\n".to_vec(),
                "more than",
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nab".to_vec(),
                "two different",
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec(),
                "transfer encoding",
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc".to_vec(),
                "ended after 3 of 10",
            ),
            (
                b"HTTP/1.1 200 OK\r\n".to_vec(),
                "before the end of the head",
            ),
            (
                [
                    b"HTTP/1.1 200 OK\r\nX: ".as_slice(),
                    &vec![b'a'; MAX_ANSWER + 10],
                ]
                .concat(),
                "head longer",
            ),
            (
                [
                    b"HTTP/1.1 200 OK\r\n\r\n".as_slice(),
                    &vec![b'a'; MAX_ANSWER + 10],
                ]
                .concat(),
                "more than",
            ),
        ];
        for (bytes, want) in cases {
            // Never the answer itself in a failure message: some are a megabyte.
            let e = answer(&bytes).err().map(|e| e.to_string());
            assert!(
                e.as_deref().is_some_and(|e| e.contains(want)),
                "{e:?} should say {want}"
            );
        }
    }

    #[test]
    fn its_error_chains_read_as_one_line_and_are_bounded() {
        assert_eq!(
            readable(br#"["Error from API","The VM could not boot"]"#),
            "Error from API: The VM could not boot"
        );
        assert_eq!(readable(b" plain \n"), "plain");
        assert_eq!(readable(&vec![b'x'; 10_000]).chars().count(), MAX_QUOTE + 1);
    }

    #[test]
    fn states_read_as_qmp_names_them() {
        assert_eq!(
            status_of("Running"),
            Status {
                running: true,
                state: "running".into()
            }
        );
        assert_eq!(status_of("Created").state, "prelaunch");
        assert_eq!(status_of("Shutdown").state, "shutdown");
        assert_eq!(status_of("Weird").state, "weird");
    }
}
