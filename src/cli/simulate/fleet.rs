//! The fleet: what each device is and knows, the plan shared by all, and the scheduler that
//! wakes devices when they are due.
//!
//! Devices live in one `Vec`. A due HTTP device is moved into a task for one step (a poll,
//! with the update it may start) and moved back with its next wake time; at most
//! `--concurrency` steps run at once, each holding a permit of `Shared::slots`. An MQTT
//! device's first step is its whole session: it runs until the simulation stops and takes
//! a permit only around its own HTTP requests.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

use super::{EXIT_REFUSED, EXIT_UNREACHABLE, EXIT_USAGE, SimulateArgs};
use super::{arduino, ddi, esp32fota, native_http, native_mqtt, report, seed001, summary, thingsboard, wire};

/// Devices start (provision and check in for the first time) at most this many a second.
const STARTS_PER_SECOND: f64 = 1000.0;

/// A device protocol, as the real client speaks it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Protocol {
    NativeHttp,
    NativeMqtt,
    Arduino,
    Seed001,
    Esp32fota,
    Thingsboard,
    Ddi,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::NativeHttp => "native-http",
            Protocol::NativeMqtt => "native-mqtt",
            Protocol::Arduino => "arduino",
            Protocol::Seed001 => "seed-001",
            Protocol::Esp32fota => "esp32fota",
            Protocol::Thingsboard => "thingsboard",
            Protocol::Ddi => "ddi",
        }
    }

    /// Protocols whose devices hold an MQTT session for the whole run.
    pub fn holds_session(self) -> bool {
        matches!(self, Protocol::NativeMqtt | Protocol::Thingsboard)
    }
}

/// Where a device's current update stands, as the server last recorded it from the device's
/// messages (the states of `GET /api/v1/devices/{id}/updates`; `None`: never offered).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum UpdateState {
    None,
    Offered,
    Downloading,
    Downloaded,
    Installing,
    Installed,
    Succeeded,
    Failed,
    Rejected,
    Cancelled,
}

impl UpdateState {
    pub const ALL: [UpdateState; 10] = [
        UpdateState::None,
        UpdateState::Offered,
        UpdateState::Downloading,
        UpdateState::Downloaded,
        UpdateState::Installing,
        UpdateState::Installed,
        UpdateState::Succeeded,
        UpdateState::Failed,
        UpdateState::Rejected,
        UpdateState::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            UpdateState::None => "none",
            UpdateState::Offered => "offered",
            UpdateState::Downloading => "downloading",
            UpdateState::Downloaded => "downloaded",
            UpdateState::Installing => "installing",
            UpdateState::Installed => "installed",
            UpdateState::Succeeded => "succeeded",
            UpdateState::Failed => "failed",
            UpdateState::Rejected => "rejected",
            UpdateState::Cancelled => "cancelled",
        }
    }

    fn index(self) -> usize {
        UpdateState::ALL.iter().position(|s| *s == self).unwrap_or(0)
    }

    /// Whether the attempt is over.
    pub fn is_final(self) -> bool {
        matches!(self, UpdateState::Succeeded | UpdateState::Failed | UpdateState::Rejected | UpdateState::Cancelled)
    }
}

/// What happens to a device when it installs an update: drawn once per device and version
/// from the seed, so a run repeats.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Fate {
    Works,
    Silent,
    FailDownload,
    FailInstall,
    FailBoot,
}

/// What a device does at its next wake.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Phase {
    /// Provision (if it has no token) and check in.
    Poll,
    /// It installed an update and restarts: it checks in with the new version, or with the
    /// old one when `boots` is false (the bootloader went back).
    Reboot { boots: bool },
    /// It stopped talking.
    Silent,
}

/// One simulated device: about 200 bytes while idle.
pub struct Device {
    pub index: u32,
    pub protocol: Protocol,
    pub mac: [u8; 6],
    pub version: Box<str>,
    pub device_id: Option<Box<str>>,
    pub token: Option<Box<str>>,
    /// The server's poll interval for it (`poll_interval_s`, DDI's `sleep`).
    pub poll_s: u32,
    pub phase: Phase,
    /// Its current update: where it stands, its release (or DDI action) and version.
    pub state: UpdateState,
    pub release_id: Option<Box<str>>,
    pub target: Option<Box<str>>,
    pub errors: u32,
}

impl Device {
    fn new(plan: &Plan, index: u32) -> Device {
        let protocol = plan.protocols[index as usize % plan.protocols.len()];
        Device {
            index,
            protocol,
            mac: plan.mac(index),
            version: plan.version.as_str().into(),
            device_id: None,
            token: None,
            poll_s: 3600,
            phase: Phase::Poll,
            state: UpdateState::None,
            release_id: None,
            target: None,
            errors: 0,
        }
    }

    /// `AA:BB:CC:DD:EE:FF`, as `WiFi.macAddress()` prints it.
    pub fn mac_colon(&self) -> String {
        self.mac.iter().map(|b| format!("{b:02X}")).collect::<Vec<_>>().join(":")
    }

    /// `aa-bb-cc-dd-ee-ff`.
    pub fn mac_hyphen(&self) -> String {
        self.mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join("-")
    }

    /// `ESP.getEfuseMac()` in decimal: the MAC's first byte is the lowest.
    pub fn mac_efuse(&self) -> String {
        let mut le = [0u8; 8];
        le[..6].copy_from_slice(&self.mac);
        u64::from_le_bytes(le).to_string()
    }

    pub fn set_state(&mut self, shared: &Shared, state: UpdateState) {
        shared.stats.states[self.state.index()].fetch_sub(1, Ordering::Relaxed);
        shared.stats.states[state.index()].fetch_add(1, Ordering::Relaxed);
        self.state = state;
    }

    pub fn set_version(&mut self, shared: &Shared, version: &str) {
        if *self.version == *version {
            return;
        }
        let mut versions = shared.stats.versions.lock().expect("versions lock");
        if let Some(count) = versions.get_mut(&*self.version) {
            *count -= 1;
        }
        *versions.entry(version.into()).or_insert(0) += 1;
        self.version = version.into();
    }

    /// Starts tracking a new update attempt the server just offered.
    pub fn offered(&mut self, shared: &Shared, release_id: Option<&str>, version: &str) {
        self.release_id = release_id.map(Into::into);
        self.target = Some(version.into());
        self.set_state(shared, UpdateState::Offered);
        shared.stats.offers.fetch_add(1, Ordering::Relaxed);
    }

    pub fn fate(&self, shared: &Shared) -> Fate {
        shared.plan.fate(self.index, self.target.as_deref().unwrap_or(""))
    }

    /// Time until its next poll: its interval (`--poll`, else the server's) ±10 %.
    pub fn poll_wait(&self, shared: &Shared) -> Duration {
        let base = shared.plan.poll.unwrap_or(Duration::from_secs(u64::from(self.poll_s.max(1))));
        base.mul_f64(rand::rng().random_range(0.9..1.1))
    }
}

/// What the command line asked for, checked.
pub struct Plan {
    pub base: String,
    pub devices: u32,
    pub product: String,
    pub hardware: String,
    pub version: String,
    pub protocols: Vec<Protocol>,
    pub provision_key: Option<String>,
    pub provision_secret: Option<String>,
    pub shared_secret: Option<String>,
    pub mqtt: (String, u16),
    pub ddi_tenant: String,
    pub fail_download: f64,
    pub fail_install: f64,
    pub fail_boot: f64,
    pub silent: f64,
    pub poll: Option<Duration>,
    pub duration: Option<Duration>,
    pub seed: u64,
    pub concurrency: u32,
    pub summary_every: Duration,
    mac_prefix: [u8; 3],
}

impl Plan {
    pub fn from_args(args: &SimulateArgs) -> Result<Plan, String> {
        let server = url::Url::parse(&args.server).map_err(|e| format!("--server `{}` is not a URL: {e}", args.server))?;
        if !matches!(server.scheme(), "http" | "https") || server.host_str().is_none() {
            return Err(format!("--server `{}` is not an http:// or https:// URL", args.server));
        }
        let base = args.server.trim_end_matches('/').to_string();
        let faults = args.fail_download + args.fail_install + args.fail_boot + args.silent;
        if faults > 100.0 {
            return Err(format!("--fail-download, --fail-install, --fail-boot and --silent add up to {faults}%, more than 100%"));
        }
        if args.product.trim().is_empty() {
            return Err("--product is empty".into());
        }
        if semver_like(&args.version).is_none() {
            return Err(format!("--version `{}` is not a version like 1.0.0", args.version));
        }
        if args.provision_key.is_some() != args.provision_secret.is_some() {
            return Err("--provision-key and --provision-secret go together".into());
        }
        if !(1..=1_000_000).contains(&args.devices) {
            return Err(format!("--devices must be from 1 to 1000000, not {}", args.devices));
        }
        let with_key = args.provision_key.is_some();
        let protocols = match args.protocol.as_str() {
            "native-http" => vec![Protocol::NativeHttp],
            "native-mqtt" => vec![Protocol::NativeMqtt],
            "arduino" => vec![Protocol::Arduino],
            "seed-001" => vec![Protocol::Seed001],
            "esp32fota" => vec![Protocol::Esp32fota],
            "thingsboard" => vec![Protocol::Thingsboard],
            "ddi" => vec![Protocol::Ddi],
            "mix" => {
                let mut all = vec![Protocol::NativeHttp, Protocol::NativeMqtt, Protocol::Arduino, Protocol::Esp32fota, Protocol::Ddi];
                if args.shared_secret.is_some() {
                    all.push(Protocol::Seed001);
                }
                if with_key {
                    all.push(Protocol::Thingsboard);
                }
                all
            }
            other => {
                return Err(format!(
                    "unknown --protocol `{other}`: use native-http, native-mqtt, arduino, seed-001, esp32fota, thingsboard, ddi or mix"
                ));
            }
        };
        if protocols == [Protocol::Thingsboard] && !with_key {
            return Err("--protocol thingsboard needs --provision-key and --provision-secret: ThingsBoard provisioning names the product by its key".into());
        }
        if protocols == [Protocol::Seed001] && args.shared_secret.is_none() {
            return Err("--protocol seed-001 needs --shared-secret (the server's UPDRAFT_COMPAT_SHARED_SECRET)".into());
        }
        if protocols.contains(&Protocol::Seed001) && !seed001_version(&args.version) {
            return Err(format!("--version `{}` is not a seed-001 version (1, 1.2 or 1.2.3)", args.version));
        }
        let mqtt = mqtt_address(args.mqtt.as_deref(), &server)?;
        let mut seed_rng = StdRng::seed_from_u64(args.seed);
        // Locally administered (bit 1 of the first byte), unicast (bit 0 clear).
        let mac_prefix = [(seed_rng.random::<u8>() & 0xFC) | 0x02, seed_rng.random(), seed_rng.random()];
        Ok(Plan {
            base,
            devices: u32::try_from(args.devices).unwrap_or(u32::MAX),
            product: args.product.clone(),
            hardware: args.hardware.clone(),
            version: args.version.clone(),
            protocols,
            provision_key: args.provision_key.clone(),
            provision_secret: args.provision_secret.clone(),
            shared_secret: args.shared_secret.clone(),
            mqtt,
            ddi_tenant: args.ddi_tenant.clone(),
            fail_download: args.fail_download,
            fail_install: args.fail_install,
            fail_boot: args.fail_boot,
            silent: args.silent,
            poll: args.poll,
            duration: args.duration,
            seed: args.seed,
            concurrency: args.concurrency,
            summary_every: args.summary_every,
            mac_prefix,
        })
    }

    /// Device `index`'s MAC: the seed's locally administered prefix, the index, and a last
    /// byte from the seed with its top bit set (so the eFuse form, which reads the MAC
    /// backwards, has 15 digits as a real one mostly does).
    pub fn mac(&self, index: u32) -> [u8; 6] {
        let [_, a, b, c] = index.to_be_bytes();
        [self.mac_prefix[0], self.mac_prefix[1], a, b, c, self.mac_prefix[2] | 0x80]
    }

    /// The fate of device `index` when it installs `version`.
    pub fn fate(&self, index: u32, version: &str) -> Fate {
        let version_hash = version.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
        let mut rng = StdRng::seed_from_u64(self.seed ^ (u64::from(index) << 20) ^ version_hash.rotate_left(7));
        let draw = rng.random_range(0.0..100.0);
        let mut bound = self.silent;
        for (share, fate) in [
            (0.0, Fate::Silent),
            (self.fail_download, Fate::FailDownload),
            (self.fail_install, Fate::FailInstall),
            (self.fail_boot, Fate::FailBoot),
        ] {
            bound += share;
            if draw < bound {
                return fate;
            }
        }
        Fate::Works
    }
}

/// `major.minor.patch` of a plain version, if it is one.
pub fn semver_like(text: &str) -> Option<(u64, u64, u64)> {
    let core = text.trim().trim_start_matches('v').split(['-', '+']).next()?;
    let parts: Vec<u64> = core.split('.').map(|p| p.parse().ok()).collect::<Option<_>>()?;
    match parts[..] {
        [major] => Some((major, 0, 0)),
        [major, minor] => Some((major, minor, 0)),
        [major, minor, patch] => Some((major, minor, patch)),
        _ => None,
    }
}

/// The seed-001 version syntax: one to three dot-separated numbers.
fn seed001_version(text: &str) -> bool {
    let parts: Vec<&str> = text.split('.').collect();
    parts.len() <= 3 && parts.iter().all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
}

fn mqtt_address(given: Option<&str>, server: &url::Url) -> Result<(String, u16), String> {
    let Some(text) = given else {
        let host = server.host_str().unwrap_or("localhost").trim_start_matches('[').trim_end_matches(']');
        return Ok((host.to_string(), 1883));
    };
    let bare = text.strip_prefix("mqtt://").or_else(|| text.strip_prefix("tcp://")).unwrap_or(text).trim_end_matches('/');
    let (host, port) = bare.rsplit_once(':').ok_or_else(|| format!("--mqtt `{text}` is not host:port"))?;
    let port = port.parse::<u16>().map_err(|_| format!("--mqtt `{text}` has no valid port"))?;
    if host.is_empty() {
        return Err(format!("--mqtt `{text}` has no host"));
    }
    Ok((host.trim_start_matches('[').trim_end_matches(']').to_string(), port))
}

/// Counters the summary and the report read.
pub struct Stats {
    pub requests: AtomicU64,
    pub offers: AtomicU64,
    pub states: [AtomicI64; UpdateState::ALL.len()],
    pub versions: Mutex<HashMap<Box<str>, i64>>,
    pub errors: Mutex<BTreeMap<String, u64>>,
    pub sessions: AtomicI64,
}

impl Stats {
    pub fn error(&self, kind: impl Into<String>) {
        *self.errors.lock().expect("errors lock").entry(kind.into()).or_insert(0) += 1;
    }

    pub fn errors_total(&self) -> u64 {
        self.errors.lock().expect("errors lock").values().sum()
    }
}

/// What every device task shares.
pub struct Shared {
    pub plan: Plan,
    pub http: reqwest::Client,
    /// Permits for HTTP work: at most `--concurrency` requests in flight.
    pub slots: Arc<Semaphore>,
    pub stop: CancellationToken,
    pub stats: Stats,
}

/// What a step asks of the scheduler.
pub enum Next {
    After(Duration),
    Never,
}

/// A reason to stop before the fleet starts, with the exit code.
pub struct Fatal {
    pub code: i32,
    pub message: String,
}

impl Fatal {
    pub fn new(code: i32, message: impl Into<String>) -> Fatal {
        Fatal { code, message: message.into() }
    }
}

/// Runs the fleet until `--duration` passes or a signal comes, then reports.
pub async fn run(plan: Plan, report_path: Option<PathBuf>) -> Result<(), Fatal> {
    let http = reqwest::Client::builder()
        .no_proxy()
        .user_agent(concat!("updraft-simulate/", env!("CARGO_PKG_VERSION")))
        .pool_max_idle_per_host(plan.concurrency as usize)
        .pool_idle_timeout(Duration::from_secs(30))
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(60))
        .tcp_nodelay(true)
        .build()
        .map_err(|e| Fatal::new(EXIT_USAGE, format!("cannot build the HTTP client: {e}")))?;
    let n = plan.devices;
    let shared = Arc::new(Shared {
        slots: Arc::new(Semaphore::new(plan.concurrency as usize)),
        http,
        stop: CancellationToken::new(),
        stats: Stats {
            requests: AtomicU64::new(0),
            offers: AtomicU64::new(0),
            states: std::array::from_fn(|_| AtomicI64::new(0)),
            versions: Mutex::new(HashMap::from([(plan.version.as_str().into(), i64::from(n))])),
            errors: Mutex::new(BTreeMap::new()),
            sessions: AtomicI64::new(0),
        },
        plan,
    });
    shared.stats.states[UpdateState::None.index()].store(i64::from(n), Ordering::Relaxed);
    let mut devices: Vec<Option<Device>> = (0..n).map(|i| Some(Device::new(&shared.plan, i))).collect();
    if let Some(first) = devices[0].as_mut() {
        preflight(&shared, first).await?;
    }

    let started = Instant::now();
    let started_at = chrono::Utc::now();
    watch_for_the_end(&shared);
    let mut summary = summary::Summary::new(&shared, started);
    let mut heap: BinaryHeap<Reverse<(Instant, u32)>> = BinaryHeap::with_capacity(n as usize);
    let ramp = Duration::from_secs_f64(f64::from(n) / STARTS_PER_SECOND);
    let ramp = shared.plan.poll.map_or(ramp, |poll| ramp.min(poll));
    for index in 0..n {
        let at = if index == 0 { started } else { started + ramp.mul_f64(rand::rng().random_range(0.0..1.0)) };
        heap.push(Reverse((at, index)));
    }
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<(Device, Next)>();
    let mut out = 0usize;
    let mut spare = None;
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + summary.every(), summary.every());
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let now = Instant::now();
        while let Some(Reverse((at, index))) = heap.peek().copied() {
            if at > now {
                break;
            }
            let permit = match spare.take() {
                Some(permit) => permit,
                None => match shared.slots.clone().try_acquire_owned() {
                    Ok(permit) => permit,
                    Err(_) => break,
                },
            };
            heap.pop();
            let Some(mut device) = devices[index as usize].take() else { continue };
            out += 1;
            let shared = shared.clone();
            let done_tx = done_tx.clone();
            tokio::spawn(async move {
                let mut permit = Some(permit);
                if device.protocol.holds_session() {
                    // A session takes permits only around its own HTTP requests.
                    permit = None;
                }
                let next = tokio::select! {
                    next = step(&shared, &mut device) => next,
                    () = shared.stop.cancelled() => Next::Never,
                };
                drop(permit);
                let _ = done_tx.send((device, next));
            });
        }
        let due = heap.peek().map(|Reverse((at, _))| *at);
        let blocked = due.is_some_and(|at| at <= now);
        let sleep_until = tokio::time::Instant::from_std(due.unwrap_or(now + Duration::from_secs(3600)));
        tokio::select! {
            () = shared.stop.cancelled() => break,
            Some((device, next)) = done_rx.recv() => {
                out -= 1;
                let index = device.index;
                if let Next::After(wait) = next {
                    heap.push(Reverse((Instant::now() + wait, index)));
                }
                devices[index as usize] = Some(device);
            }
            permit = shared.slots.clone().acquire_owned(), if blocked => spare = permit.ok(),
            () = tokio::time::sleep_until(sleep_until), if !blocked => {}
            _ = ticks.tick() => summary.tick(&shared),
        }
    }
    drop(spare);
    // Every device comes back (its step is dropped at the next await) before the report.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while out > 0 {
        match tokio::time::timeout_at(deadline, done_rx.recv()).await {
            Ok(Some((device, _))) => {
                out -= 1;
                let index = device.index as usize;
                devices[index] = Some(device);
            }
            _ => break,
        }
    }
    summary.finish(&shared);
    let devices: Vec<Device> = devices.into_iter().flatten().collect();
    let report = report::Report::build(&shared, &devices, started_at, started.elapsed());
    eprintln!("{}", report.closing_line());
    if let Some(path) = report_path {
        let text = serde_json::to_string_pretty(&report).unwrap_or_default();
        std::fs::write(&path, text + "\n")
            .map_err(|e| Fatal::new(EXIT_REFUSED, format!("cannot write the report to {}: {e}", path.display())))?;
    }
    Ok(())
}

/// One wake of a device, in its protocol.
async fn step(shared: &Shared, device: &mut Device) -> Next {
    match device.protocol {
        Protocol::NativeHttp => native_http::wake(shared, device).await,
        Protocol::NativeMqtt => native_mqtt::session(shared, device).await,
        Protocol::Arduino => arduino::wake(shared, device).await,
        Protocol::Seed001 => seed001::wake(shared, device).await,
        Protocol::Esp32fota => esp32fota::wake(shared, device).await,
        Protocol::Thingsboard => thingsboard::session(shared, device).await,
        Protocol::Ddi => ddi::wake(shared, device).await,
    }
}

/// Stops the fleet after `--duration`, on Ctrl-C and on SIGTERM.
fn watch_for_the_end(shared: &Arc<Shared>) {
    let stop = shared.stop.clone();
    let duration = shared.plan.duration;
    tokio::spawn(async move {
        let elapsed = async {
            match duration {
                Some(duration) => tokio::time::sleep(duration).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = elapsed => {},
            () = crate::cli::shutdown_signal() => {},
        }
        stop.cancel();
    });
}

/// Before the fleet starts: the server answers, the first device is admitted (a wrong key
/// stops here), and the MQTT broker takes its login when the protocol needs one.
async fn preflight(shared: &Shared, first: &mut Device) -> Result<(), Fatal> {
    let health = format!("{}/api/health", shared.plan.base);
    match shared.http.get(&health).send().await {
        Ok(response) if response.status().is_success() => {}
        Ok(response) => {
            return Err(Fatal::new(
                EXIT_UNREACHABLE,
                format!("{} does not look like an Updraft server: GET /api/health answered {}", shared.plan.base, response.status()),
            ));
        }
        Err(e) => {
            return Err(Fatal::new(EXIT_UNREACHABLE, format!("cannot reach the server at {}: {}", shared.plan.base, wire::describe(&e))));
        }
    }
    let provisioned = match first.protocol {
        Protocol::Thingsboard => thingsboard::provision(shared, first).await,
        _ => wire::provision(shared, first).await,
    };
    provisioned.map_err(|e| e.fatal("provision the first device"))?;
    if shared.plan.protocols.iter().any(|p| p.holds_session()) {
        super::mqtt::probe(shared, first).await?;
    }
    Ok(())
}
