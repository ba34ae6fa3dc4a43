//! mqtt-load: the MQTT load generator of `bench/mqtt.sh`.
//!
//! A deliberately small MQTT 3.1.1 client on raw tokio sockets (one task and a few hundred
//! bytes of buffer per connection), so that 10,000 connections cost the client little and the
//! client is never the bottleneck. Every subcommand prints one JSON line of results on stdout;
//! progress goes to stderr.
//!
//! ```text
//! mqtt-load idle      --host H --port P --creds FILE --hold SECS [--ready-file F]
//! mqtt-load push-wait --host H --port P --creds FILE (--trigger-cmd CMD | --start-file F) [--timeout SECS]
//! mqtt-load pub       --host H --port P --publishers 100 --qos 1 --size 64 --seconds 10
//!                     [--sub-mode self|pair|wildcard|none] [--creds FILE | --username U --password P]
//! mqtt-load publish-each --host H --port P --creds FILE [--topic-fmt 'updraft/{u}/ota'] [--retain 1]
//!                        [--payload TEXT] [--window 1000]
//! ```
//!
//! Common options: `--concurrency 200` (connections being set up at once), `--keepalive 120`
//! (CONNECT keepalive; a PINGREQ goes every keepalive/2 s), `--connect-timeout 60`,
//! `--count N` (use only the first N lines of the creds file), `--topic-fmt` (`{u}` = the
//! line's username, `{c}` = its client id, `{i}` = its index).
//! A creds file has one `client_id username password` per line (`-` for no username/password).

use std::collections::BTreeMap;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{watch, Semaphore};

// ---------------------------------------------------------------- MQTT 3.1.1 encoding

const CONNECT: u8 = 0x10;
const CONNACK: u8 = 0x20;
const PUBLISH: u8 = 0x30;
const PUBACK: u8 = 0x40;
const SUBSCRIBE: u8 = 0x82;
const SUBACK: u8 = 0x90;
const PINGREQ: u8 = 0xC0;
const PINGRESP: u8 = 0xD0;
const DISCONNECT: u8 = 0xE0;

fn put_len(buf: &mut Vec<u8>, mut n: usize) {
    loop {
        let mut b = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            b |= 0x80;
        }
        buf.push(b);
        if n == 0 {
            break;
        }
    }
}

fn put_str(buf: &mut Vec<u8>, s: &[u8]) {
    buf.extend_from_slice(&(s.len() as u16).to_be_bytes());
    buf.extend_from_slice(s);
}

fn connect_packet(client_id: &str, user: Option<&str>, pass: Option<&str>, keepalive: u16) -> Vec<u8> {
    let mut body = Vec::with_capacity(64 + client_id.len());
    put_str(&mut body, b"MQTT");
    body.push(4); // protocol level 3.1.1
    let mut flags = 0x02; // clean session
    if user.is_some() {
        flags |= 0x80;
    }
    if pass.is_some() {
        flags |= 0x40;
    }
    body.push(flags);
    body.extend_from_slice(&keepalive.to_be_bytes());
    put_str(&mut body, client_id.as_bytes());
    if let Some(u) = user {
        put_str(&mut body, u.as_bytes());
    }
    if let Some(p) = pass {
        put_str(&mut body, p.as_bytes());
    }
    let mut out = vec![CONNECT];
    put_len(&mut out, body.len());
    out.extend_from_slice(&body);
    out
}

fn subscribe_packet(pid: u16, filter: &str, qos: u8) -> Vec<u8> {
    let mut out = vec![SUBSCRIBE];
    put_len(&mut out, 2 + 2 + filter.len() + 1);
    out.extend_from_slice(&pid.to_be_bytes());
    put_str(&mut out, filter.as_bytes());
    out.push(qos);
    out
}

fn put_publish(out: &mut Vec<u8>, topic: &[u8], qos: u8, pid: u16, payload: &[u8]) {
    put_publish_r(out, topic, qos, false, pid, payload)
}

fn put_publish_r(out: &mut Vec<u8>, topic: &[u8], qos: u8, retain: bool, pid: u16, payload: &[u8]) {
    out.push(PUBLISH | (qos << 1) | retain as u8);
    put_len(out, 2 + topic.len() + if qos > 0 { 2 } else { 0 } + payload.len());
    put_str(out, topic);
    if qos > 0 {
        out.extend_from_slice(&pid.to_be_bytes());
    }
    out.extend_from_slice(payload);
}

fn put_puback(out: &mut Vec<u8>, pid: u16) {
    out.extend_from_slice(&[PUBACK, 2]);
    out.extend_from_slice(&pid.to_be_bytes());
}

/// A received PUBLISH, borrowed from the read buffer.
struct Publish<'a> {
    qos: u8,
    retain: bool,
    pid: u16,
    topic: &'a [u8],
    payload: &'a [u8],
}

fn parse_publish(flags: u8, body: &[u8]) -> Option<Publish<'_>> {
    let qos = (flags >> 1) & 3;
    let retain = flags & 1 == 1;
    if body.len() < 2 {
        return None;
    }
    let tl = u16::from_be_bytes([body[0], body[1]]) as usize;
    let mut at = 2 + tl;
    if body.len() < at {
        return None;
    }
    let topic = &body[2..at];
    let mut pid = 0;
    if qos > 0 {
        if body.len() < at + 2 {
            return None;
        }
        pid = u16::from_be_bytes([body[at], body[at + 1]]);
        at += 2;
    }
    Some(Publish { qos, retain, pid, topic, payload: &body[at..] })
}

/// Incoming bytes, parsed into packets without allocating.
struct Reader {
    buf: Vec<u8>,
    pos: usize,
    chunk: usize,
}

impl Reader {
    fn new(chunk: usize) -> Self {
        Reader { buf: Vec::new(), pos: 0, chunk }
    }

    /// Reads more bytes (cancel-safe: the only await is one `read_buf`). EOF is an error.
    async fn fill<R: AsyncRead + Unpin>(&mut self, rd: &mut R) -> io::Result<()> {
        if self.pos > 0 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        if self.buf.capacity() - self.buf.len() < self.chunk / 2 {
            self.buf.reserve(self.chunk);
        }
        let n = rd.read_buf(&mut self.buf).await?;
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed by the broker"));
        }
        Ok(())
    }

    /// The next complete packet: (first byte, body range in `self.buf`).
    fn next(&mut self) -> Option<(u8, std::ops::Range<usize>)> {
        let avail = &self.buf[self.pos..];
        if avail.len() < 2 {
            return None;
        }
        let (mut len, mut mult, mut i) = (0usize, 1usize, 1usize);
        loop {
            if i >= avail.len() || i > 4 {
                return None;
            }
            let b = avail[i];
            len += (b & 0x7f) as usize * mult;
            mult *= 128;
            i += 1;
            if b & 0x80 == 0 {
                break;
            }
        }
        if avail.len() < i + len {
            return None;
        }
        let start = self.pos + i;
        let first = avail[0];
        self.pos = start + len;
        Some((first, start..start + len))
    }

    /// Compacts an empty buffer away (keeps idle connections small).
    fn shrink_if_empty(&mut self) {
        if self.pos == self.buf.len() && self.buf.capacity() > 4 * self.chunk {
            self.buf = Vec::new();
            self.pos = 0;
        }
    }
}

// ---------------------------------------------------------------- connection setup

#[derive(Clone)]
struct Cred {
    client_id: String,
    username: Option<String>,
    password: Option<String>,
}

fn topic_for(fmt: &str, c: &Cred, i: usize) -> String {
    fmt.replace("{u}", c.username.as_deref().unwrap_or(&c.client_id))
        .replace("{c}", &c.client_id)
        .replace("{i}", &i.to_string())
}

enum SetupErr {
    Io(String),
    Refused(u8),
    SubRefused(u8),
    Timeout,
}

impl SetupErr {
    fn key(&self) -> String {
        match self {
            SetupErr::Io(e) => format!("io: {e}"),
            SetupErr::Refused(rc) => format!("connack rc={rc}"),
            SetupErr::SubRefused(rc) => format!("suback rc={rc}"),
            SetupErr::Timeout => "timeout".into(),
        }
    }
}

struct Conn {
    stream: TcpStream,
    rd: Reader,
}

/// TCP connect, CONNECT/CONNACK, and SUBSCRIBE/SUBACK when `sub` is given. PUBLISHes that
/// arrive before the SUBACK are acknowledged and ignored; later ones stay in the buffer.
async fn setup(addr: &str, c: &Cred, keepalive: u16, sub: Option<(&str, u8)>, chunk: usize) -> Result<Conn, SetupErr> {
    let io = |e: io::Error| SetupErr::Io(e.kind().to_string());
    let mut stream = TcpStream::connect(addr).await.map_err(io)?;
    stream.set_nodelay(true).map_err(io)?;
    stream
        .write_all(&connect_packet(&c.client_id, c.username.as_deref(), c.password.as_deref(), keepalive))
        .await
        .map_err(io)?;
    let mut rd = Reader::new(chunk);
    let mut acks = Vec::new();
    // CONNACK
    'connack: loop {
        rd.fill(&mut stream).await.map_err(io)?;
        while let Some((first, r)) = rd.next() {
            if first & 0xF0 == CONNACK {
                let b = &rd.buf[r];
                let rc = if b.len() >= 2 { b[1] } else { 255 };
                if rc != 0 {
                    return Err(SetupErr::Refused(rc));
                }
                break 'connack;
            }
        }
    }
    let Some((filter, qos)) = sub else { return Ok(Conn { stream, rd }) };
    stream.write_all(&subscribe_packet(1, filter, qos)).await.map_err(io)?;
    loop {
        while let Some((first, r)) = rd.next() {
            match first & 0xF0 {
                SUBACK => {
                    let b = &rd.buf[r];
                    let rc = if b.len() >= 3 { b[2] } else { 0x80 };
                    if !acks.is_empty() {
                        stream.write_all(&acks).await.map_err(io)?;
                    }
                    if rc > 2 {
                        return Err(SetupErr::SubRefused(rc));
                    }
                    return Ok(Conn { stream, rd });
                }
                PUBLISH => {
                    if let Some(p) = parse_publish(first & 0x0F, &rd.buf[r]) {
                        if p.qos == 1 {
                            put_puback(&mut acks, p.pid);
                        }
                    }
                }
                _ => {}
            }
        }
        rd.fill(&mut stream).await.map_err(io)?;
    }
}

// ---------------------------------------------------------------- arguments & output

struct Args {
    pairs: Vec<(String, String)>,
}

impl Args {
    fn parse(argv: &[String]) -> Args {
        let mut pairs = Vec::new();
        let mut i = 0;
        while i < argv.len() {
            let k = argv[i].strip_prefix("--").unwrap_or_else(|| die(&format!("unexpected argument {}", argv[i])));
            let v = argv.get(i + 1).cloned().unwrap_or_else(|| die(&format!("--{k} needs a value")));
            pairs.push((k.to_string(), v));
            i += 2;
        }
        Args { pairs }
    }
    fn get(&self, k: &str) -> Option<&str> {
        self.pairs.iter().rev().find(|(n, _)| n == k).map(|(_, v)| v.as_str())
    }
    fn str(&self, k: &str, d: &str) -> String {
        self.get(k).unwrap_or(d).to_string()
    }
    fn num<T: std::str::FromStr>(&self, k: &str, d: T) -> T {
        match self.get(k) {
            None => d,
            Some(v) => v.parse().unwrap_or_else(|_| die(&format!("--{k}: not a number: {v}"))),
        }
    }
}

fn die(msg: &str) -> ! {
    eprintln!("mqtt-load: {msg}");
    std::process::exit(2)
}

fn log(msg: &str) {
    let t = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64();
    eprintln!("[mqtt-load {:.3}] {msg}", t);
}

fn read_creds(path: &str, count: usize) -> Vec<Cred> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| die(&format!("{path}: {e}")));
    let opt = |s: Option<&str>| s.filter(|s| *s != "-").map(str::to_string);
    let mut v: Vec<Cred> = text
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| {
            let mut it = l.split_whitespace();
            Cred { client_id: it.next().unwrap().to_string(), username: opt(it.next()), password: opt(it.next()) }
        })
        .collect();
    if count > 0 {
        v.truncate(count);
    }
    v
}

fn json_str(s: &str) -> String {
    let mut o = String::from("\"");
    for ch in s.chars() {
        match ch {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            c if (c as u32) < 0x20 => o.push_str(&format!("\\u{:04x}", c as u32)),
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

fn json_map(m: &BTreeMap<String, usize>) -> String {
    let items: Vec<String> = m.iter().map(|(k, v)| format!("{}:{}", json_str(k), v)).collect();
    format!("{{{}}}", items.join(","))
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((p / 100.0) * (sorted.len() as f64 - 1.0)).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn num(x: f64) -> String {
    if x.is_finite() { format!("{:.3}", x) } else { "null".into() }
}

/// CPU seconds (user + system) this process has used.
fn cpu_s_self() -> f64 {
    let s = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let rest = s.rsplit_once(") ").map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0) + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    ticks / 100.0
}

fn rss_kb_self() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok()))
        .unwrap_or(0)
}

// ---------------------------------------------------------------- idle and push-wait

struct Shared {
    base: Instant,
    /// Trigger time in ns after `base`; 0 = not yet triggered.
    t0: AtomicU64,
    setup_done: AtomicUsize,
    setup_ok: AtomicUsize,
    received: AtomicUsize,
    dropped: AtomicUsize,
}

struct SessionResult {
    err: Option<SetupErr>,
    /// ns after `base` of the first live PUBLISH (retain = 0) after the trigger.
    first_rx: Option<u64>,
    live_msgs: u32,
    ignored_retained: u32,
    ignored_before_trigger: u32,
    retain_after: u32,
    dropped: bool,
}

#[allow(clippy::too_many_arguments)]
async fn session(
    sh: Arc<Shared>,
    sem: Arc<Semaphore>,
    addr: Arc<String>,
    c: Cred,
    topic: String,
    keepalive: u16,
    connect_timeout: Duration,
    mut stop: watch::Receiver<bool>,
) -> SessionResult {
    let mut res = SessionResult { err: None, first_rx: None, live_msgs: 0, ignored_retained: 0, ignored_before_trigger: 0, retain_after: 0, dropped: false };
    let permit = sem.acquire().await.unwrap();
    let conn = tokio::time::timeout(connect_timeout, setup(&addr, &c, keepalive, Some((&topic, 1)), 512)).await;
    drop(permit);
    let conn = match conn {
        Ok(Ok(conn)) => {
            sh.setup_ok.fetch_add(1, Relaxed);
            conn
        }
        Ok(Err(e)) => {
            res.err = Some(e);
            sh.setup_done.fetch_add(1, Relaxed);
            return res;
        }
        Err(_) => {
            res.err = Some(SetupErr::Timeout);
            sh.setup_done.fetch_add(1, Relaxed);
            return res;
        }
    };
    sh.setup_done.fetch_add(1, Relaxed);
    let Conn { mut stream, mut rd } = conn;
    let (mut r, mut w) = stream.split();
    let period = Duration::from_secs((keepalive as u64 / 2).max(1));
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    let mut out = Vec::new();
    loop {
        // Packets already buffered (those right after the SUBACK too) first.
        while let Some((first, range)) = rd.next() {
            match first & 0xF0 {
                PUBLISH => {
                    let Some(p) = parse_publish(first & 0x0F, &rd.buf[range]) else { continue };
                    if p.qos == 1 {
                        put_puback(&mut out, p.pid);
                    }
                    let now = sh.base.elapsed().as_nanos() as u64;
                    let t0 = sh.t0.load(Relaxed);
                    // Retained messages stored before come with the SUBACK, before the trigger:
                    // everything before the trigger is ignored. After it, a broker that keeps
                    // the retain flag on live forwards (not 3.1.1, which says retain = 0) still
                    // counts, and is reported as `retain_flag_after_trigger`.
                    if t0 == 0 || now < t0 {
                        if p.retain {
                            res.ignored_retained += 1;
                        } else {
                            res.ignored_before_trigger += 1;
                        }
                    } else {
                        res.live_msgs += 1;
                        res.retain_after += p.retain as u32;
                        if res.first_rx.is_none() {
                            res.first_rx = Some(now);
                            sh.received.fetch_add(1, Relaxed);
                        }
                    }
                }
                PINGRESP => {}
                _ => {}
            }
        }
        rd.shrink_if_empty();
        if !out.is_empty() {
            if w.write_all(&out).await.is_err() {
                res.dropped = true;
                break;
            }
            out.clear();
        }
        tokio::select! {
            r = rd.fill(&mut r) => {
                if r.is_err() {
                    res.dropped = true;
                    break;
                }
            }
            _ = ping.tick() => {
                if w.write_all(&[PINGREQ, 0]).await.is_err() {
                    res.dropped = true;
                    break;
                }
            }
            _ = stop.changed() => {
                let _ = w.write_all(&[DISCONNECT, 0]).await;
                break;
            }
        }
    }
    if res.dropped {
        sh.dropped.fetch_add(1, Relaxed);
    }
    res
}

async fn run_sessions(a: &Args, mode: &str) {
    let addr = Arc::new(format!("{}:{}", a.str("host", "127.0.0.1"), a.str("port", "1883")));
    let creds = read_creds(&a.get("creds").unwrap_or_else(|| die("--creds FILE is required")).to_string(), a.num("count", 0usize));
    let n = creds.len();
    let topic_fmt = a.str("topic-fmt", "updraft/{u}/ota");
    let keepalive: u16 = a.num("keepalive", 120);
    let connect_timeout = Duration::from_secs_f64(a.num("connect-timeout", 60.0));
    let sem = Arc::new(Semaphore::new(a.num("concurrency", 200usize)));
    let sh = Arc::new(Shared {
        base: Instant::now(),
        t0: AtomicU64::new(0),
        setup_done: AtomicUsize::new(0),
        setup_ok: AtomicUsize::new(0),
        received: AtomicUsize::new(0),
        dropped: AtomicUsize::new(0),
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    log(&format!("{mode}: opening {n} sessions to {addr} (topic {topic_fmt}, {} at once)", sem.available_permits()));
    let t_start = Instant::now();
    let mut handles = Vec::with_capacity(n);
    for (i, c) in creds.into_iter().enumerate() {
        let topic = topic_for(&topic_fmt, &c, i);
        handles.push(tokio::spawn(session(sh.clone(), sem.clone(), addr.clone(), c, topic, keepalive, connect_timeout, stop_rx.clone())));
    }
    let mut last_log = Instant::now();
    while sh.setup_done.load(Relaxed) < n {
        tokio::time::sleep(Duration::from_millis(20)).await;
        if last_log.elapsed() > Duration::from_secs(5) {
            last_log = Instant::now();
            log(&format!("{} of {n} set up ({} ok)", sh.setup_done.load(Relaxed), sh.setup_ok.load(Relaxed)));
        }
    }
    let setup_secs = t_start.elapsed().as_secs_f64();
    let t_ready = Instant::now();
    let ok = sh.setup_ok.load(Relaxed);
    eprintln!("READY {ok} failed={} setup_s={setup_secs:.2}", n - ok);
    if let Some(f) = a.get("ready-file") {
        std::fs::write(f, format!("{ok}\n")).unwrap_or_else(|e| die(&format!("{f}: {e}")));
    }

    let extra: String;
    match mode {
        "idle" => {
            let hold = Duration::from_secs_f64(a.num("hold", 30.0));
            let stop_file = a.get("stop-file").map(str::to_string);
            let end = Instant::now() + hold;
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).unwrap();
            loop {
                if Instant::now() >= end || stop_file.as_deref().is_some_and(|f| std::path::Path::new(f).exists()) {
                    break;
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                    _ = term.recv() => break,
                }
            }
            extra = format!(",\"held_s\":{:.1},\"dropped_while_held\":{}", t_ready.elapsed().as_secs_f64(), sh.dropped.load(Relaxed));
        }
        _ => {
            // push-wait
            let timeout = Duration::from_secs_f64(a.num("timeout", 30.0));
            let mut trigger_ms = f64::NAN;
            let mut trigger_status = String::from("null");
            let mut child = None;
            if let Some(cmd) = a.get("trigger-cmd") {
                sh.t0.store(sh.base.elapsed().as_nanos().max(1) as u64, Relaxed);
                child = Some(
                    tokio::process::Command::new("sh")
                        .arg("-c")
                        .arg(cmd)
                        .stdin(std::process::Stdio::null())
                        .spawn()
                        .unwrap_or_else(|e| die(&format!("trigger command: {e}"))),
                );
            } else if let Some(f) = a.get("start-file") {
                // The file holds the trigger time, seconds since the epoch (date +%s.%N).
                log(&format!("waiting for {f}"));
                loop {
                    if let Ok(s) = std::fs::read_to_string(f) {
                        if let Ok(epoch) = s.trim().parse::<f64>() {
                            let now_epoch = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64();
                            let ago = Duration::from_secs_f64((now_epoch - epoch).max(0.0));
                            let t0 = sh.base.elapsed().saturating_sub(ago);
                            sh.t0.store(t0.as_nanos().max(1) as u64, Relaxed);
                            break;
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            } else {
                die("push-wait needs --trigger-cmd CMD or --start-file FILE");
            }
            let t0 = sh.t0.load(Relaxed);
            let deadline = Instant::now() + timeout;
            loop {
                if let Some(ch) = child.as_mut() {
                    if let Ok(Some(st)) = ch.try_wait() {
                        trigger_ms = (sh.base.elapsed().as_nanos() as u64 - t0) as f64 / 1e6;
                        trigger_status = st.code().map(|c| c.to_string()).unwrap_or("null".into());
                        child = None;
                    }
                }
                if (sh.received.load(Relaxed) + sh.dropped.load(Relaxed) >= ok && child.is_none()) || Instant::now() >= deadline {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            if let Some(mut ch) = child {
                let _ = ch.kill().await;
                trigger_status = "\"killed at timeout\"".into();
            }
            extra = format!(",\"trigger_cmd_ms\":{},\"trigger_exit\":{},\"timeout_s\":{}", num(trigger_ms), trigger_status, timeout.as_secs_f64());
        }
    }
    let rss = rss_kb_self();
    let _ = stop_tx.send(true);
    let mut errs: BTreeMap<String, usize> = BTreeMap::new();
    let (mut lat, mut live, mut retained, mut before, mut dropped, mut retain_after) = (Vec::new(), 0u64, 0u64, 0u64, 0usize, 0u64);
    let t0 = sh.t0.load(Relaxed);
    for h in handles {
        let r = match tokio::time::timeout(Duration::from_secs(10), h).await {
            Ok(Ok(r)) => r,
            _ => continue,
        };
        if let Some(e) = &r.err {
            *errs.entry(e.key()).or_default() += 1;
        }
        if let Some(t) = r.first_rx {
            lat.push((t.saturating_sub(t0)) as f64 / 1e6);
        }
        live += r.live_msgs as u64;
        retained += r.ignored_retained as u64;
        before += r.ignored_before_trigger as u64;
        retain_after += r.retain_after as u64;
        dropped += r.dropped as usize;
    }
    lat.sort_by(|x, y| x.partial_cmp(y).unwrap());
    let mut line = format!(
        "{{\"mode\":\"{mode}\",\"sessions\":{n},\"connected\":{ok},\"failed\":{},\"failures\":{},\"setup_s\":{:.3},\"dropped\":{dropped},\"client_rss_kb\":{rss}",
        n - ok,
        json_map(&errs),
        setup_secs
    );
    line.push_str(&extra);
    if mode == "push-wait" {
        line.push_str(&format!(
            ",\"received\":{},\"missing\":{},\"last_ms\":{},\"p50_ms\":{},\"p99_ms\":{},\"first_ms\":{},\"live_msgs\":{live},\"ignored_retained\":{retained},\"ignored_before_trigger\":{before},\"retain_flag_after_trigger\":{retain_after}",
            lat.len(),
            ok - lat.len().min(ok),
            num(lat.last().copied().unwrap_or(f64::NAN)),
            num(pct(&lat, 50.0)),
            num(pct(&lat, 99.0)),
            num(lat.first().copied().unwrap_or(f64::NAN)),
        ));
    } else {
        line.push_str(&format!(",\"ignored_retained\":{retained},\"msgs_while_held\":{}", before + live));
    }
    line.push_str(&format!(",\"client_cpu_s\":{:.2}}}", cpu_s_self()));
    println!("{line}");
}

// ---------------------------------------------------------------- pub: throughput

const BUCKET_US: u64 = 10;
const BUCKETS: usize = 50_000; // 10 us .. 500 ms, then overflow

struct PubShared {
    base: Instant,
    delivered: AtomicU64,
    acked: AtomicU64,
    measuring: AtomicBool,
    stop: AtomicBool,
    hist: Vec<AtomicU32>,
    ready: AtomicUsize,
    failed: AtomicUsize,
}

struct Role {
    cred: Cred,
    /// Topic this connection publishes to (None: subscriber only).
    pub_topic: Option<String>,
    /// Filter this connection subscribes to.
    sub: Option<String>,
}

async fn pub_conn(sh: Arc<PubShared>, sem: Arc<Semaphore>, addr: Arc<String>, role: Role, qos: u8, size: usize, window: usize, mut go: watch::Receiver<bool>) -> Option<String> {
    let permit = sem.acquire().await.unwrap();
    let conn = tokio::time::timeout(Duration::from_secs(60), setup(&addr, &role.cred, 120, role.sub.as_deref().map(|s| (s, qos)), 64 * 1024)).await;
    drop(permit);
    let Conn { mut stream, mut rd } = match conn {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            sh.failed.fetch_add(1, Relaxed);
            return Some(e.key());
        }
        Err(_) => {
            sh.failed.fetch_add(1, Relaxed);
            return Some("timeout".into());
        }
    };
    sh.ready.fetch_add(1, Relaxed);
    while !*go.borrow() {
        if go.changed().await.is_err() {
            return None;
        }
    }
    let (mut r, mut w) = stream.split();
    let topic = role.pub_topic.as_deref().map(str::as_bytes);
    let mut payload = vec![b'x'; size.max(8)];
    let mut out: Vec<u8> = Vec::with_capacity(window * (size + 64));
    let mut inflight = 0usize;
    let mut pid: u16 = 0;
    let mut stopping = false;
    let mut quiet_since: Option<Instant> = None;
    loop {
        let stop = sh.stop.load(Relaxed);
        if let Some(t) = topic {
            if !stop {
                let n = if qos == 0 { window } else { window - inflight };
                let ts = sh.base.elapsed().as_micros() as u64;
                payload[..8].copy_from_slice(&ts.to_be_bytes());
                for _ in 0..n {
                    pid = if pid == u16::MAX { 1 } else { pid + 1 };
                    put_publish(&mut out, t, qos, pid, &payload[..size]);
                }
                if qos > 0 {
                    inflight += n;
                }
            }
        }
        if !out.is_empty() {
            if w.write_all(&out).await.is_err() {
                return Some("write failed".into());
            }
            out.clear();
        }
        if stop && !stopping {
            stopping = true;
            quiet_since = Some(Instant::now());
        }
        if stopping {
            // Drain for up to 1 s of silence after stop, then disconnect.
            match tokio::time::timeout(Duration::from_millis(300), rd.fill(&mut r)).await {
                Ok(Ok(())) => quiet_since = Some(Instant::now()),
                Ok(Err(_)) => return None,
                Err(_) => {}
            }
            if quiet_since.is_some_and(|q| q.elapsed() > Duration::from_secs(1)) || (inflight == 0 && topic.is_some() && role.sub.is_none()) {
                let _ = w.write_all(&[DISCONNECT, 0]).await;
                return None;
            }
        } else if qos == 0 && topic.is_some() && role.sub.is_none() {
            tokio::task::yield_now().await;
            continue;
        } else {
            tokio::select! {
                res = rd.fill(&mut r) => if res.is_err() { return Some("closed by broker".into()) },
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
        }
        let (mut delivered, mut acked) = (0u64, 0u64);
        let measuring = sh.measuring.load(Relaxed);
        let now_us = sh.base.elapsed().as_micros() as u64;
        while let Some((first, range)) = rd.next() {
            match first & 0xF0 {
                PUBACK => {
                    inflight = inflight.saturating_sub(1);
                    acked += 1;
                }
                PUBLISH => {
                    let Some(p) = parse_publish(first & 0x0F, &rd.buf[range]) else { continue };
                    if p.qos == 1 {
                        put_puback(&mut out, p.pid);
                    }
                    delivered += 1;
                    if measuring && p.payload.len() >= 8 {
                        let sent = u64::from_be_bytes(p.payload[..8].try_into().unwrap());
                        let b = (now_us.saturating_sub(sent) / BUCKET_US) as usize;
                        sh.hist[b.min(BUCKETS)].fetch_add(1, Relaxed);
                    }
                    let _ = p.topic;
                }
                _ => {}
            }
        }
        if delivered > 0 {
            sh.delivered.fetch_add(delivered, Relaxed);
        }
        if acked > 0 {
            sh.acked.fetch_add(acked, Relaxed);
        }
    }
}

async fn run_pub(a: &Args) {
    let addr = Arc::new(format!("{}:{}", a.str("host", "127.0.0.1"), a.str("port", "1883")));
    let publishers: usize = a.num("publishers", 100);
    let qos: u8 = a.num("qos", 1);
    let size: usize = a.num("size", 64).max(8);
    let seconds: f64 = a.num("seconds", 10.0);
    let warmup: f64 = a.num("warmup", 3.0);
    let window: usize = a.num("window", 20);
    let mode = a.str("sub-mode", "self");
    let subscribers: usize = a.num("subscribers", if mode == "wildcard" { 1 } else { publishers });
    let topic_fmt = a.str("topic-fmt", "bench/{i}");
    let wildcard = a.str("wildcard", "bench/#");
    let prefix = a.str("client-prefix", "mqtt-load");
    // Credentials: a creds file (line i for connection i), or one --username/--password for all.
    let file = a.get("creds").map(|f| read_creds(f, 0));
    let needed = match mode.as_str() {
        "pair" | "wildcard" => publishers + subscribers,
        "self" | "none" => publishers,
        m => die(&format!("--sub-mode {m}: expected self, pair, wildcard or none")),
    };
    let cred = |i: usize, suffix: &str| -> Cred {
        match &file {
            Some(v) => {
                let c = v.get(i).cloned().unwrap_or_else(|| die(&format!("the creds file has fewer than {needed} lines")));
                c
            }
            None => Cred {
                client_id: format!("{prefix}-{suffix}{i}"),
                username: a.get("username").map(str::to_string),
                password: a.get("password").map(str::to_string),
            },
        }
    };
    let mut roles = Vec::new();
    for i in 0..publishers {
        let c = cred(i, "p");
        let t = topic_for(&topic_fmt, &c, i);
        let sub = if mode == "self" { Some(t.clone()) } else { None };
        roles.push(Role { cred: c, pub_topic: Some(t), sub });
    }
    match mode.as_str() {
        "pair" => {
            for i in 0..publishers {
                let t = roles[i].pub_topic.clone();
                roles.push(Role { cred: cred(publishers + i, "s"), pub_topic: None, sub: t });
            }
        }
        "wildcard" => {
            for i in 0..subscribers {
                roles.push(Role { cred: cred(publishers + i, "s"), pub_topic: None, sub: Some(wildcard.clone()) });
            }
        }
        _ => {}
    }
    let conns = roles.len();
    let sh = Arc::new(PubShared {
        base: Instant::now(),
        delivered: AtomicU64::new(0),
        acked: AtomicU64::new(0),
        measuring: AtomicBool::new(false),
        stop: AtomicBool::new(false),
        hist: (0..=BUCKETS).map(|_| AtomicU32::new(0)).collect(),
        ready: AtomicUsize::new(0),
        failed: AtomicUsize::new(0),
    });
    let sem = Arc::new(Semaphore::new(a.num("concurrency", 200usize)));
    let (go_tx, go_rx) = watch::channel(false);
    log(&format!("pub: {publishers} publishers, sub-mode {mode}, {conns} connections to {addr}, qos {qos}, {size} B, window {window}"));
    // Nobody publishes before every connection is set up and subscribed (the `go` signal).
    let mut handles = Vec::new();
    let order: Vec<usize> = (publishers..conns).chain(0..publishers).collect();
    let mut roles: Vec<Option<Role>> = roles.into_iter().map(Some).collect();
    for &i in &order {
        let role = roles[i].take().unwrap();
        handles.push(tokio::spawn(pub_conn(sh.clone(), sem.clone(), addr.clone(), role, qos, size, window, go_rx.clone())));
    }
    while sh.ready.load(Relaxed) + sh.failed.load(Relaxed) < conns {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let failed = sh.failed.load(Relaxed);
    if failed > 0 {
        log(&format!("{failed} of {conns} connections failed"));
    }
    let _ = go_tx.send(true);
    tokio::time::sleep(Duration::from_secs_f64(warmup)).await;
    let (d0, a0) = (sh.delivered.load(Relaxed), sh.acked.load(Relaxed));
    let t0 = Instant::now();
    sh.measuring.store(true, Relaxed);
    tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
    sh.measuring.store(false, Relaxed);
    let (d1, a1) = (sh.delivered.load(Relaxed), sh.acked.load(Relaxed));
    let el = t0.elapsed().as_secs_f64();
    let rss = rss_kb_self();
    sh.stop.store(true, Relaxed);
    let mut errs: BTreeMap<String, usize> = BTreeMap::new();
    for h in handles {
        if let Ok(Ok(Some(e))) = tokio::time::timeout(Duration::from_secs(10), h).await {
            *errs.entry(e).or_default() += 1;
        }
    }
    // Latency percentiles from the histogram.
    let counts: Vec<u64> = sh.hist.iter().map(|c| c.load(Relaxed) as u64).collect();
    let total: u64 = counts.iter().sum();
    let q = |p: f64| -> f64 {
        if total == 0 {
            return f64::NAN;
        }
        let want = ((p / 100.0) * total as f64).ceil().max(1.0) as u64;
        let mut acc = 0;
        for (i, c) in counts.iter().enumerate() {
            acc += c;
            if acc >= want {
                return ((i as u64 + 1) * BUCKET_US) as f64 / 1000.0;
            }
        }
        f64::NAN
    };
    println!(
        "{{\"mode\":\"pub\",\"publishers\":{publishers},\"sub_mode\":\"{mode}\",\"subscribers\":{},\"connections\":{conns},\"qos\":{qos},\"size\":{size},\"window\":{window},\"warmup_s\":{warmup},\"seconds\":{:.3},\"delivered\":{},\"delivered_per_s\":{:.0},\"acked\":{},\"acked_per_s\":{:.0},\"latency_p50_ms\":{},\"latency_p99_ms\":{},\"connect_failures\":{failed},\"errors\":{},\"client_rss_kb\":{rss},\"client_cpu_s\":{:.2},\"acked_total\":{},\"delivered_total\":{}}}",
        match mode.as_str() { "self" | "pair" => publishers, "none" => 0, _ => subscribers },
        el,
        d1 - d0,
        (d1 - d0) as f64 / el,
        a1 - a0,
        (a1 - a0) as f64 / el,
        num(q(50.0)),
        num(q(99.0)),
        json_map(&errs),
        cpu_s_self(),
        // The whole run, warm-up and the drain after the stop included: in pair and self mode
        // each message has one subscriber, so acked_total - delivered_total is what the broker
        // acknowledged and never delivered.
        sh.acked.load(Relaxed),
        sh.delivered.load(Relaxed),
    );
}

// ---------------------------------------------------------------- publish-each

/// One connection publishes one QoS 1 message to each line's topic (a stand-in for the
/// server's own per-device publish when the broker is plain Mosquitto).
async fn run_publish_each(a: &Args) {
    let addr = format!("{}:{}", a.str("host", "127.0.0.1"), a.str("port", "1883"));
    let creds = read_creds(a.get("creds").unwrap_or_else(|| die("--creds FILE is required")), a.num("count", 0usize));
    let topic_fmt = a.str("topic-fmt", "updraft/{u}/ota");
    let window: usize = a.num("window", 1000);
    let retain = a.num("retain", 0u8) == 1;
    let payload = a.str("payload", "{\"type\":\"ota\",\"version\":\"2.0.0\"}").into_bytes();
    let me = Cred {
        client_id: a.str("client-id", "mqtt-load-publish-each"),
        username: a.get("username").map(str::to_string),
        password: a.get("password").map(str::to_string),
    };
    let t = Instant::now();
    let Conn { mut stream, mut rd } = match setup(&addr, &me, 120, None, 64 * 1024).await {
        Ok(c) => c,
        Err(e) => die(&format!("publish-each: {}", e.key())),
    };
    let topics: Vec<String> = creds.iter().enumerate().map(|(i, c)| topic_for(&topic_fmt, c, i)).collect();
    let (mut next, mut inflight, mut acked, mut pid) = (0usize, 0usize, 0usize, 0u16);
    let mut out = Vec::new();
    while acked < topics.len() {
        while inflight < window && next < topics.len() {
            pid = if pid == u16::MAX { 1 } else { pid + 1 };
            put_publish_r(&mut out, topics[next].as_bytes(), 1, retain, pid, &payload);
            next += 1;
            inflight += 1;
        }
        if !out.is_empty() {
            stream.write_all(&out).await.unwrap_or_else(|e| die(&format!("publish-each: {e}")));
            out.clear();
        }
        rd.fill(&mut stream).await.unwrap_or_else(|e| die(&format!("publish-each: {e}")));
        while let Some((first, _)) = rd.next() {
            if first & 0xF0 == PUBACK {
                inflight -= 1;
                acked += 1;
            }
        }
    }
    let _ = stream.write_all(&[DISCONNECT, 0]).await;
    println!("{{\"mode\":\"publish-each\",\"published\":{},\"elapsed_ms\":{:.3}}}", topics.len(), t.elapsed().as_secs_f64() * 1000.0);
}

fn main() {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let Some(cmd) = argv.first().cloned() else {
        die("usage: mqtt-load idle|push-wait|pub|publish-each [--option value ...] (see src/main.rs)")
    };
    let a = Args::parse(&argv[1..]);
    let threads: usize = a.num("threads", 0);
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    rt.enable_all();
    if threads > 0 {
        rt.worker_threads(threads);
    }
    let rt = rt.build().unwrap();
    rt.block_on(async {
        match cmd.as_str() {
            "idle" | "push-wait" => run_sessions(&a, &cmd).await,
            "pub" => run_pub(&a).await,
            "publish-each" => run_publish_each(&a).await,
            _ => die(&format!("unknown subcommand {cmd}")),
        }
    });
}
