//! The commit log: what makes a commit durable quickly, and the rule that
//! tells a torn write from corruption when it is read back.
//!
//! A sled flush costs about a millisecond here (it writes and syncs sled's
//! log buffers); an append plus `fdatasync` of a small file costs a fraction
//! of that. So a group of commits is made durable by appending their journal
//! records (which hold every new value) to `<dataDir>/commit.log` and syncing
//! that file once. sled's own log catches up in the background.
//!
//! # Layout
//!
//! - Two 64-byte header slots: `"krpslog1"`, seq, generation, base tx id,
//!   CRC-32. The valid slot with the higher seq is the header. Each time the
//!   log is emptied (once sled has flushed everything it covers) the *other*
//!   slot gets a fresh random generation and the next tx id as its base, so a
//!   torn header write leaves the previous header valid.
//! - Frames from byte 128 on, 8-byte aligned, in tx id order from the base:
//!   `[generation u64][tx u64][len u32][crc32(body) u32]
//!   [crc32(tx, len, body crc) u32][0 u32][body, zero-padded to 8]
//!   [!generation u64][tx u64]`. The body is a `krepis.v1.JournalRecord`.
//!   The file is preallocated with zeros and reused from the start after it
//!   is emptied, so the bytes after the live frames are zeros or frames of an
//!   earlier generation, never frames of the current one.
//!
//! # Torn write or corruption
//!
//! A commit is acknowledged only after the `fdatasync` that covered its
//! frame returned; groups are written one after another, each after the
//! previous one's sync. A crash in the middle of a write leaves a *prefix* of
//! that write on disk (the page cache of a killed process keeps whatever
//! `write` copied; ENOSPC stops a write part-way). Therefore:
//!
//! - the log ends at the first position that holds no intact frame of the
//!   current generation;
//! - if any intact frame header *or trailer* of the current generation lies
//!   beyond that position, the write went past it: the bytes there were
//!   written whole and changed afterwards. That is **corruption**, and the
//!   frames from there on were acknowledged: open fails with `CORRUPT`,
//!   naming the file, the offset and the tx ids at risk (unless every lost
//!   frame is below sled's recovered next tx id, i.e. sled has them already:
//!   then the damage is skipped and reported);
//! - otherwise the damaged frame is a **torn tail**: the last write was cut
//!   short and none of it was acknowledged. It is dropped and reported.
//!
//! The trailer is what makes damage to the *last* frame detectable: a bit
//! flip in the last acknowledged frame leaves its trailer behind it, a torn
//! write never does. (SQLite's WAL stops at the first frame whose checksum
//! fails and ignores the rest; etcd's WAL calls a checksum failure torn only
//! in the last file and only when a 512-byte sector of the record is all
//! zeros, and treats a zero length as the end. See `docs/design.md`.)
//!
//! # Recovery
//!
//! On open, before anything else touches the store: sled recovers a prefix
//! of the batches it was given, and every commit batch also stores the next
//! tx id, so every frame whose tx id is at or beyond sled's next tx id was
//! acknowledged (or in flight) and is re-applied, in order, as the same
//! atomic batch. Then sled is flushed and the log emptied.
//!
//! A store that has been opened before must have its log: a missing, empty
//! or header-less `commit.log` is `CORRUPT` (acknowledged commits sled had
//! not flushed may be gone). `recover: "truncate"` opens anyway, drops what
//! cannot be replayed and reports it.
//!
//! # Transaction ids are never reused
//!
//! `commit.hwm` holds a high-water mark: no tx id at or above it was ever
//! handed out. It is raised in steps of [`HWM_STEP`], synced before the first
//! frame past it is written (one extra sync per 65,536 commits). When a
//! recovery drops frames, the next tx id jumps to the mark, so an id a client
//! may still hold never names another transaction.
//!
//! A failed write leaves the log untrusted: the store refuses writes until
//! it is reopened (and recovered).

use super::dir::{sync_dir, COMMIT_LOG, HWM_FILE};
use super::keys::{data_key, journal_key, tree_prefix, META_NEXT_TX};
use crate::error::{KernelError, KernelResult};
use crate::proto::{ErrorCode, JournalRecord, StoreRecovery};
use prost::Message;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// The log is preallocated in chunks of zeros and written in place: an
/// fdatasync that does not change the file's size does not have to commit
/// file-system metadata (measured here: ~120 µs instead of ~210 µs).
pub(crate) const CHUNK_BYTES: u64 = 4 << 20;
/// Past this size the flusher has sled flush and then empties the log.
pub(crate) const ROTATE_BYTES: u64 = 64 << 20;
/// The high-water mark is raised this far past the ids in use.
pub(crate) const HWM_STEP: u64 = 1 << 16;

const SLOT_BYTES: usize = 64;
/// Both header slots; the first frame starts here.
pub(crate) const HEADER_BYTES: usize = 2 * SLOT_BYTES;
const LOG_MAGIC: &[u8; 8] = b"krpslog1";
const HWM_MAGIC: &[u8; 8] = b"krpshwm1";
const HWM_SLOT_BYTES: usize = 32;
/// Frame header and trailer sizes.
pub(crate) const FRAME_HEAD_BYTES: usize = 32;
pub(crate) const FRAME_TAIL_BYTES: usize = 16;

/// What to do when the log cannot be replayed completely.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecoverMode {
    /// Refuse to open (`CORRUPT`).
    Refuse,
    /// Open anyway: replay what can be, drop the rest and report it.
    Truncate,
}

fn io(context: &str, path: &Path, error: &std::io::Error) -> KernelError {
    KernelError::io(&format!("{context} {}", path.display()), error)
        .with_detail("path", path.display().to_string())
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"))
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
}

/// Bytes a frame of a `len`-byte record takes.
pub fn frame_bytes(len: usize) -> usize {
    FRAME_HEAD_BYTES + len.div_ceil(8) * 8 + FRAME_TAIL_BYTES
}

/// Frames one record for the log (the generation words stay zero until
/// [`Wal::append_durably`] stamps them: the committer frames records before
/// it knows which generation they will be written in).
pub fn frame(tx_id: u64, record: &[u8], out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0u8; 8]);
    out.extend_from_slice(&tx_id.to_le_bytes());
    out.extend_from_slice(&(record.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(record).to_le_bytes());
    let head_crc = crc32fast::hash(&out[start + 8..start + 24]);
    out.extend_from_slice(&head_crc.to_le_bytes());
    out.extend_from_slice(&[0u8; 4]);
    out.extend_from_slice(record);
    out.resize(start + FRAME_HEAD_BYTES + record.len().div_ceil(8) * 8, 0);
    out.extend_from_slice(&[0u8; 8]);
    out.extend_from_slice(&tx_id.to_le_bytes());
}

/// Writes `generation` into every frame of `frames`; returns the last tx id.
fn stamp(frames: &mut [u8], generation: u64) -> Option<u64> {
    let mut at = 0;
    let mut last = None;
    while at + FRAME_HEAD_BYTES <= frames.len() {
        let size = frame_bytes(u32_at(frames, at + 16) as usize);
        frames[at..at + 8].copy_from_slice(&generation.to_le_bytes());
        let tail = at + size - FRAME_TAIL_BYTES;
        frames[tail..tail + 8].copy_from_slice(&(!generation).to_le_bytes());
        last = Some(u64_at(frames, at + 8));
        at += size;
    }
    last
}

/// The log's header: which generation its live frames belong to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Header {
    seq: u64,
    generation: u64,
    /// The tx id of the generation's first frame.
    base_tx: u64,
}

impl Header {
    fn encode(&self) -> [u8; SLOT_BYTES] {
        let mut slot = [0u8; SLOT_BYTES];
        slot[..8].copy_from_slice(LOG_MAGIC);
        slot[8..16].copy_from_slice(&self.seq.to_le_bytes());
        slot[16..24].copy_from_slice(&self.generation.to_le_bytes());
        slot[24..32].copy_from_slice(&self.base_tx.to_le_bytes());
        let crc = crc32fast::hash(&slot[..32]);
        slot[32..36].copy_from_slice(&crc.to_le_bytes());
        slot
    }

    fn decode(slot: &[u8]) -> Option<Header> {
        if slot.len() < SLOT_BYTES
            || &slot[..8] != LOG_MAGIC
            || crc32fast::hash(&slot[..32]) != u32_at(slot, 32)
        {
            return None;
        }
        Some(Header {
            seq: u64_at(slot, 8),
            generation: u64_at(slot, 16),
            base_tx: u64_at(slot, 24),
        })
    }

    /// The valid slot with the higher seq.
    fn read(bytes: &[u8]) -> Option<Header> {
        let first = bytes.get(..SLOT_BYTES).and_then(Header::decode);
        let second = bytes.get(SLOT_BYTES..HEADER_BYTES).and_then(Header::decode);
        match (first, second) {
            (Some(a), Some(b)) => Some(if b.seq > a.seq { b } else { a }),
            (a, b) => a.or(b),
        }
    }
}

/// A fresh generation: never equal to the previous one, and unpredictable
/// enough that no value written by an application lines up with it.
fn new_generation(previous: u64) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(previous);
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_nanos()),
    );
    hasher.write_u32(std::process::id());
    match hasher.finish() {
        0 => 1,
        same if same == previous => same ^ 1,
        generation => generation,
    }
}

/// An intact frame found while reading the log.
#[derive(Debug)]
struct FrameRef {
    offset: usize,
    tx: u64,
    body: std::ops::Range<usize>,
    end: usize,
}

/// The frame of `generation` at `at`: `Ok(None)` when none starts there
/// (zeros, an older generation: the end of the log), `Err` when one starts
/// there but is not intact.
fn frame_at(bytes: &[u8], at: usize, generation: u64) -> Result<Option<FrameRef>, ()> {
    if at + 8 > bytes.len() || u64_at(bytes, at) != generation {
        return Ok(None);
    }
    if at + FRAME_HEAD_BYTES > bytes.len()
        || crc32fast::hash(&bytes[at + 8..at + 24]) != u32_at(bytes, at + 24)
    {
        return Err(());
    }
    let len = u32_at(bytes, at + 16) as usize;
    let end = at + frame_bytes(len);
    let body = at + FRAME_HEAD_BYTES..at + FRAME_HEAD_BYTES + len;
    if end > bytes.len() || crc32fast::hash(&bytes[body.clone()]) != u32_at(bytes, at + 20) {
        return Err(());
    }
    Ok(Some(FrameRef {
        offset: at,
        tx: u64_at(bytes, at + 8),
        body,
        end,
    }))
}

/// What lies beyond where the log stopped: evidence that a write went on.
#[derive(Debug, Default)]
struct Evidence {
    /// The first intact frame header of the generation: (offset, tx).
    next_header: Option<(usize, u64)>,
    /// The highest tx id any header or trailer of the generation names.
    max_tx: Option<u64>,
}

fn evidence_after(bytes: &[u8], from: usize, generation: u64) -> Evidence {
    let mut evidence = Evidence::default();
    let mut at = from.div_ceil(8) * 8;
    while at + 16 <= bytes.len() {
        let word = u64_at(bytes, at);
        let tx = if word == generation
            && at + FRAME_HEAD_BYTES <= bytes.len()
            && crc32fast::hash(&bytes[at + 8..at + 24]) == u32_at(bytes, at + 24)
        {
            let tx = u64_at(bytes, at + 8);
            evidence.next_header.get_or_insert((at, tx));
            Some(tx)
        } else if word == !generation {
            Some(u64_at(bytes, at + 8))
        } else {
            None
        };
        if let Some(tx) = tx {
            evidence.max_tx = Some(evidence.max_tx.map_or(tx, |max| max.max(tx)));
        }
        at += 8;
    }
    evidence
}

/// How reading the log ended.
#[derive(Debug, PartialEq, Eq)]
enum Stop {
    /// The log ends where nothing of its generation follows.
    Clean,
    /// The last frame was cut short (never acknowledged).
    Torn { offset: usize, tx: u64 },
    /// Acknowledged frames from `first_tx` are lost or cut off: frames
    /// through `last_tx` were written.
    Corrupt {
        offset: usize,
        first_tx: u64,
        last_tx: u64,
        why: String,
    },
}

/// The result of reading a log: the frames to replay, how it ended.
#[derive(Debug)]
struct Scan {
    /// Intact frames with tx ids at or past `floor`, contiguous, in order.
    frames: Vec<FrameRef>,
    stop: Stop,
    /// Damage skipped because sled had those frames already: (offset, tx ids).
    skipped: Vec<(usize, u64, u64)>,
    /// The highest tx id the log names anywhere.
    max_tx: Option<u64>,
}

/// Reads the frames of `header`'s generation; `floor` is sled's recovered
/// next tx id (frames below it are in sled already).
fn scan(bytes: &[u8], header: &Header, floor: u64) -> Scan {
    let generation = header.generation;
    let mut result = Scan {
        frames: Vec::new(),
        stop: Stop::Clean,
        skipped: Vec::new(),
        max_tx: None,
    };
    let note = |max: &mut Option<u64>, tx: u64| *max = Some(max.map_or(tx, |m| m.max(tx)));
    if header.base_tx > floor {
        // Frames floor..base should be in sled and are not: the store and
        // this log do not belong together (or sled lost flushed data).
        let evidence = evidence_after(bytes, HEADER_BYTES, generation);
        result.max_tx = evidence.max_tx;
        result.stop = Stop::Corrupt {
            offset: HEADER_BYTES,
            first_tx: floor,
            last_tx: evidence.max_tx.unwrap_or(header.base_tx - 1).max(floor),
            why: format!(
                "starts at transaction {} but the store ends at {}: the store and its commit log do not belong together",
                header.base_tx,
                floor - 1
            ),
        };
        return result;
    }
    let mut at = HEADER_BYTES;
    let mut expected = header.base_tx;
    loop {
        let (damaged, why) = match frame_at(bytes, at, generation) {
            Ok(Some(frame)) if frame.tx == expected => {
                note(&mut result.max_tx, frame.tx);
                expected += 1;
                at = frame.end;
                if frame.tx >= floor {
                    result.frames.push(frame);
                }
                continue;
            }
            Ok(Some(frame)) => (
                true,
                format!("has transaction {} where {expected} was expected", frame.tx),
            ),
            Ok(None) => (false, String::new()),
            Err(()) => (true, "has a damaged record".to_owned()),
        };
        // The frame at `at` is damaged or the log seems to end there: did
        // the write go on beyond it?
        let evidence = evidence_after(bytes, at + 8, generation);
        if let Some(max) = evidence.max_tx {
            note(&mut result.max_tx, max);
        }
        let lost_through = match evidence.next_header {
            Some((_, tx)) => tx.checked_sub(1),
            None => evidence.max_tx,
        };
        let Some(lost_through) = lost_through else {
            result.stop = if damaged {
                Stop::Torn {
                    offset: at,
                    tx: expected,
                }
            } else {
                Stop::Clean
            };
            return result;
        };
        if lost_through < floor {
            // Nothing acknowledged is missing (sled has those frames):
            // carry on with the frames after the damage.
            if lost_through >= expected {
                result.skipped.push((at, expected, lost_through));
            }
            match evidence.next_header {
                Some((offset, tx)) if offset > at && tx >= expected => {
                    at = offset;
                    expected = tx;
                    continue;
                }
                None => {
                    result.stop = Stop::Clean;
                    return result;
                }
                Some(_) => {}
            }
        }
        let why = if damaged {
            why
        } else {
            "ends early: records written after this point follow".to_owned()
        };
        result.stop = Stop::Corrupt {
            offset: at,
            first_tx: expected.max(floor),
            last_tx: evidence.max_tx.unwrap_or(lost_through).max(lost_through),
            why,
        };
        return result;
    }
}

/// The high-water mark of tx ids (`commit.hwm`): two slots, the valid one
/// with the higher seq wins, so a torn write leaves the previous mark.
struct Hwm {
    path: PathBuf,
    /// Opened (created) on the first raise: reading never changes the dir.
    file: Option<File>,
    seq: u64,
    /// No tx id at or above this was handed out.
    mark: u64,
}

impl Hwm {
    fn decode(slot: &[u8]) -> Option<(u64, u64)> {
        if &slot[..8] != HWM_MAGIC || crc32fast::hash(&slot[..24]) != u32_at(slot, 24) {
            return None;
        }
        Some((u64_at(slot, 8), u64_at(slot, 16)))
    }

    /// Reads the mark of `data_dir` (0 when there is none).
    fn open(data_dir: &Path) -> KernelResult<Hwm> {
        let path = data_dir.join(HWM_FILE);
        let mut bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(error) => return Err(io("reading", &path, &error)),
        };
        bytes.resize(2 * HWM_SLOT_BYTES, 0);
        let (seq, mark) = [
            Hwm::decode(&bytes[..HWM_SLOT_BYTES]),
            Hwm::decode(&bytes[HWM_SLOT_BYTES..]),
        ]
        .into_iter()
        .flatten()
        .max()
        .unwrap_or((0, 0));
        Ok(Hwm {
            path,
            file: None,
            seq,
            mark,
        })
    }

    /// Durably raises the mark to `mark`.
    fn raise(&mut self, mark: u64) -> KernelResult<()> {
        let seq = self.seq + 1;
        let mut slot = [0u8; HWM_SLOT_BYTES];
        slot[..8].copy_from_slice(HWM_MAGIC);
        slot[8..16].copy_from_slice(&seq.to_le_bytes());
        slot[16..24].copy_from_slice(&mark.to_le_bytes());
        let crc = crc32fast::hash(&slot[..24]);
        slot[24..28].copy_from_slice(&crc.to_le_bytes());
        let at = (seq % 2) * HWM_SLOT_BYTES as u64;
        if self.file.is_none() {
            let file = OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&self.path)
                .map_err(|error| io("opening", &self.path, &error))?;
            if let Some(dir) = self.path.parent() {
                sync_dir(dir);
            }
            self.file = Some(file);
        }
        let file = self.file.as_mut().expect("opened above");
        file.seek(SeekFrom::Start(at))
            .and_then(|_| file.write_all(&slot))
            .and_then(|()| file.sync_data())
            .map_err(|error| io("writing", &self.path, &error))?;
        self.seq = seq;
        self.mark = mark;
        Ok(())
    }
}

pub struct Wal {
    path: PathBuf,
    file: File,
    header: Header,
    /// Where the next frame goes.
    size: u64,
    /// Bytes preallocated (zeros beyond `size`, or frames of older generations).
    allocated: u64,
    /// The tx id the next frame carries.
    next_tx: u64,
    hwm: Hwm,
    failed: bool,
}

fn corrupt_log(path: &Path, what: impl std::fmt::Display) -> KernelError {
    KernelError::new(
        ErrorCode::Corrupt,
        format!(
            "{} {what}. Nothing was changed; to open the store anyway and drop what cannot be \
             replayed, open it with store.recover = \"truncate\" (the kernel's stats then report \
             exactly what was dropped)",
            path.display()
        ),
    )
    .with_detail("path", path.display().to_string())
}

impl Wal {
    /// Replays the log of `data_dir` into `db` (see the module docs),
    /// flushes sled, starts a new generation of the log and returns it with
    /// a report. `existing`: the store was opened before, so its log must be
    /// there. `map` turns sled errors into errors naming the store.
    pub fn recover(
        db: &sled::Db,
        data_dir: &Path,
        existing: bool,
        mode: RecoverMode,
        map: &dyn Fn(sled::Error) -> KernelError,
    ) -> KernelResult<(Wal, StoreRecovery)> {
        let path = data_dir.join(COMMIT_LOG);
        let found = match File::open(&path) {
            Ok(mut file) => {
                let mut bytes = Vec::new();
                file.read_to_end(&mut bytes)
                    .map_err(|error| io("reading", &path, &error))?;
                Some(bytes)
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => None,
            Err(error) => return Err(io("opening", &path, &error)),
        };
        let floor = db
            .get(META_NEXT_TX)
            .map_err(map)?
            .and_then(|bytes| <[u8; 8]>::try_from(bytes.as_ref()).ok())
            .map_or(1, u64::from_be_bytes);
        let hwm = Hwm::open(data_dir)?;
        let mut report = StoreRecovery {
            mode: match mode {
                RecoverMode::Refuse => "refuse",
                RecoverMode::Truncate => "truncate",
            }
            .to_owned(),
            ..Default::default()
        };
        let header = found.as_deref().and_then(Header::read);
        let mut next = floor;
        // Set when acknowledged commits may be gone: ids jump past the mark.
        let mut lost = false;
        match (found.as_deref(), header) {
            (Some(bytes), Some(header)) => {
                let read = scan(bytes, &header, floor);
                for (offset, first, last) in &read.skipped {
                    report.skipped.push(format!(
                        "a damaged record at offset {offset} (transactions {first}..={last}, already in the store)"
                    ));
                }
                match &read.stop {
                    Stop::Clean => {}
                    Stop::Torn { offset, tx } => {
                        report.torn_offset = *offset as u64;
                        report.torn_tx_id = *tx;
                    }
                    Stop::Corrupt {
                        offset,
                        first_tx,
                        last_tx,
                        why,
                    } => {
                        if mode == RecoverMode::Refuse {
                            return Err(corrupt_log(
                                &path,
                                format!(
                                    "{why} at offset {offset}: acknowledged transactions {first_tx}..={last_tx} cannot be replayed"
                                ),
                            )
                            .with_detail("offset", offset.to_string())
                            .with_detail("firstTxId", first_tx.to_string())
                            .with_detail("lastTxId", last_tx.to_string())
                            .with_detail("reason", "damaged_log"));
                        }
                        report.dropped_offset = *offset as u64;
                        report.dropped_first_tx_id = *first_tx;
                        report.dropped_last_tx_id = *last_tx;
                        report.dropped_reason = format!("{why} at offset {offset}");
                        lost = true;
                    }
                }
                for frame in &read.frames {
                    let body = &bytes[frame.body.clone()];
                    let record = JournalRecord::decode(body)
                        .ok()
                        .filter(|record| record.tx_id == frame.tx);
                    let Some(record) = record else {
                        // Its checksum holds, so it was written like this:
                        // not a torn write.
                        if mode == RecoverMode::Refuse {
                            return Err(corrupt_log(
                                &path,
                                format!(
                                    "has a record at offset {} that does not decode as transaction {}",
                                    frame.offset, frame.tx
                                ),
                            )
                            .with_detail("offset", frame.offset.to_string())
                            .with_detail("firstTxId", frame.tx.to_string())
                            .with_detail("reason", "damaged_log"));
                        }
                        report.dropped_offset = frame.offset as u64;
                        report.dropped_first_tx_id = frame.tx;
                        report.dropped_last_tx_id = read.max_tx.unwrap_or(frame.tx).max(frame.tx);
                        report.dropped_reason =
                            format!("an undecodable record at offset {}", frame.offset);
                        lost = true;
                        break;
                    };
                    replay(db, &record, body, map)?;
                    report.replayed += 1;
                    next = frame.tx + 1;
                }
                if lost {
                    next = next.max(read.max_tx.map_or(0, |tx| tx + 1));
                }
            }
            (found, None) if existing => {
                let what = match found {
                    None => "is missing",
                    Some([]) => "is empty",
                    Some(bytes) if bytes.iter().all(|&byte| byte == 0) => {
                        "was emptied (it holds only zeros)"
                    }
                    Some(_) => "has no valid header (damaged, or written by an older krepis)",
                };
                let at_risk = if hwm.mark > floor {
                    format!("{floor}..={}", hwm.mark - 1)
                } else {
                    format!("from {floor}")
                };
                if mode == RecoverMode::Refuse {
                    return Err(corrupt_log(
                        &path,
                        format!(
                            "{what}, but this store has been opened before: acknowledged transactions the store had not flushed yet (ids {at_risk}) may be lost"
                        ),
                    )
                    .with_detail("firstTxId", floor.to_string())
                    .with_detail("reason", "missing_log"));
                }
                report.dropped_first_tx_id = floor;
                report.dropped_last_tx_id = hwm.mark.saturating_sub(1).max(floor);
                report.dropped_reason = format!("{} {what}", COMMIT_LOG);
                lost = true;
            }
            // A new store (or one whose creation was interrupted): no log
            // yet. (A header always comes from bytes.)
            (_, _) => {}
        }
        if lost {
            // Ids of dropped commits may be held by clients: never reuse them.
            next = next.max(hwm.mark);
            report.dropped = true;
        }
        if next != floor {
            db.insert(META_NEXT_TX, &next.to_be_bytes()).map_err(map)?;
        }
        db.flush().map_err(map)?;
        report.next_tx_id = next;
        let file = OpenOptions::new()
            .create(true)
            .read(true)
            .write(true)
            .truncate(false)
            .open(&path)
            .map_err(|error| io("opening", &path, &error))?;
        let allocated = file
            .metadata()
            .map_err(|error| io("reading", &path, &error))?
            .len();
        sync_dir(data_dir);
        let mut wal = Wal {
            path,
            file,
            header: header.unwrap_or(Header {
                seq: 0,
                generation: 0,
                base_tx: next,
            }),
            size: HEADER_BYTES as u64,
            allocated,
            next_tx: next,
            hwm,
            failed: false,
        };
        if wal.hwm.mark <= next {
            let mark = next + HWM_STEP;
            wal.hwm.raise(mark)?;
        }
        wal.truncate()?;
        Ok((wal, report))
    }

    /// Stamps `frames` (framed by [`frame`], in tx order, continuing the
    /// log) with the log's generation, appends them and syncs them to disk.
    pub fn append_durably(&mut self, frames: &mut [u8]) -> KernelResult<()> {
        if self.failed {
            return Err(self.failed_error());
        }
        let Some(last) = stamp(frames, self.header.generation) else {
            return Ok(());
        };
        if last >= self.hwm.mark {
            let raised = self.hwm.raise(last + HWM_STEP);
            if raised.is_err() {
                self.failed = true;
            }
            raised?;
        }
        let written = self.reserve(frames.len() as u64).and_then(|()| {
            self.file.seek(SeekFrom::Start(self.size))?;
            self.file.write_all(frames)?;
            self.file.sync_data()
        });
        if let Err(error) = written {
            // Nothing after `size` counts; the log is no longer trusted.
            self.failed = true;
            return Err(io("writing", &self.path, &error));
        }
        self.size += frames.len() as u64;
        self.next_tx = last + 1;
        Ok(())
    }

    fn failed_error(&self) -> KernelError {
        KernelError::new(
            ErrorCode::Io,
            format!(
                "writing {} failed earlier; close the kernel and open it again to recover",
                self.path.display()
            ),
        )
        .with_detail("path", self.path.display().to_string())
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// Makes sure `more` bytes fit in the preallocated part of the file.
    fn reserve(&mut self, more: u64) -> std::io::Result<()> {
        while self.size + more > self.allocated {
            self.file.seek(SeekFrom::Start(self.allocated))?;
            let zeros = vec![0u8; CHUNK_BYTES as usize];
            self.file.write_all(&zeros)?;
            self.file.sync_all()?;
            self.allocated += CHUNK_BYTES;
        }
        Ok(())
    }

    /// Empties the log: a new generation starting at the next tx id, written
    /// into the older header slot. Only after sled flushed everything it covers.
    pub fn truncate(&mut self) -> KernelResult<()> {
        if self.failed {
            return Err(self.failed_error());
        }
        let header = Header {
            seq: self.header.seq + 1,
            generation: new_generation(self.header.generation),
            base_tx: self.next_tx,
        };
        let at = (header.seq % 2) * SLOT_BYTES as u64;
        let emptied = self.reserve(0).and_then(|()| {
            self.file.seek(SeekFrom::Start(at))?;
            self.file.write_all(&header.encode())?;
            self.file.sync_data()
        });
        if let Err(error) = emptied {
            self.failed = true;
            return Err(io("emptying", &self.path, &error));
        }
        self.header = header;
        self.size = HEADER_BYTES as u64;
        Ok(())
    }
}

/// Re-applies one acknowledged commit as the atomic batch it was.
fn replay(
    db: &sled::Db,
    record: &JournalRecord,
    body: &[u8],
    map: &dyn Fn(sled::Error) -> KernelError,
) -> KernelResult<()> {
    let mut batch = sled::Batch::default();
    for change in &record.changes {
        let key = data_key(&tree_prefix(&change.tree)?, &change.key);
        match &change.value {
            Some(value) => batch.insert(key, value.as_slice()),
            None => batch.remove(key),
        }
    }
    batch.insert(&journal_key(record.tx_id)[..], body);
    batch.insert(META_NEXT_TX, &(record.tx_id + 1).to_be_bytes());
    db.apply_batch(batch).map_err(map)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::Change;

    static NEXT_DIR: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

    /// A fresh sled database whose next tx id is `next_tx`, in its own dir.
    fn store(next_tx: u64) -> (sled::Db, PathBuf) {
        let dir = std::env::temp_dir().join(format!(
            "krepis-wal-test-{}-{}",
            std::process::id(),
            NEXT_DIR.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let db = sled::Config::new().temporary(true).open().unwrap();
        db.insert(META_NEXT_TX, &next_tx.to_be_bytes()).unwrap();
        (db, dir)
    }

    fn map(error: sled::Error) -> KernelError {
        KernelError::new(ErrorCode::Io, error.to_string())
    }

    fn record(tx_id: u64) -> Vec<u8> {
        JournalRecord {
            tx_id,
            changes: vec![Change {
                tree: String::new(),
                key: format!("k{tx_id}").into_bytes(),
                previous: None,
                value: Some(format!("v{tx_id}").into_bytes()),
            }],
            ..Default::default()
        }
        .encode_to_vec()
    }

    /// A log of generation 7 starting at `base` holding `tx_ids`.
    fn log(base: u64, tx_ids: impl IntoIterator<Item = u64>) -> Vec<u8> {
        let mut bytes = vec![0u8; HEADER_BYTES];
        let header = Header {
            seq: 1,
            generation: 7,
            base_tx: base,
        };
        bytes[SLOT_BYTES..HEADER_BYTES].copy_from_slice(&header.encode());
        let mut frames = Vec::new();
        for tx_id in tx_ids {
            frame(tx_id, &record(tx_id), &mut frames);
        }
        stamp(&mut frames, 7);
        bytes.extend_from_slice(&frames);
        bytes.resize(bytes.len() + 4096, 0);
        bytes
    }

    fn value(db: &sled::Db, tx_id: u64) -> Option<Vec<u8>> {
        let key = data_key(&tree_prefix("").unwrap(), format!("k{tx_id}").as_bytes());
        db.get(key).unwrap().map(|value| value.to_vec())
    }

    fn next_tx(db: &sled::Db) -> u64 {
        u64::from_be_bytes(
            db.get(META_NEXT_TX)
                .unwrap()
                .unwrap()
                .as_ref()
                .try_into()
                .unwrap(),
        )
    }

    fn recover(db: &sled::Db, dir: &Path, mode: RecoverMode) -> KernelResult<(Wal, StoreRecovery)> {
        Wal::recover(db, dir, true, mode, &map)
    }

    /// Offset of frame `index` in a log made by [`log`].
    fn frame_offset(index: usize, tx_of_first: u64) -> usize {
        (0..index).fold(HEADER_BYTES, |at, i| {
            at + frame_bytes(record(tx_of_first + i as u64).len())
        })
    }

    /// Every frame of a log made by [`log`], as the scan must find them.
    fn all_frames_replayed(
        read: &Scan,
        bytes: &[u8],
        tx_ids: std::ops::RangeInclusive<u64>,
    ) -> bool {
        read.frames.len() == tx_ids.clone().count()
            && read.frames.iter().zip(tx_ids).all(|(frame, tx)| {
                frame.tx == tx
                    && JournalRecord::decode(&bytes[frame.body.clone()])
                        .is_ok_and(|record| record.tx_id == tx)
            })
    }

    #[test]
    fn every_bit_flip_or_zeroed_word_is_either_harmless_or_corruption() {
        let pristine = log(1, 1..=4);
        let used = frame_offset(4, 1);
        let mut cases = 0;
        for at in 0..used {
            let mut damages: Vec<Vec<u8>> = (0..8)
                .map(|bit| {
                    let mut bytes = pristine.clone();
                    bytes[at] ^= 1 << bit;
                    bytes
                })
                .collect();
            if at + 4 <= used && pristine[at..at + 4] != [0; 4] {
                let mut bytes = pristine.clone();
                bytes[at..at + 4].fill(0);
                damages.push(bytes);
            }
            for bytes in damages {
                cases += 1;
                let Some(header) = Header::read(&bytes) else {
                    // Open refuses a log without a valid header (CORRUPT).
                    assert!(at < HEADER_BYTES);
                    continue;
                };
                let read = scan(&bytes, &header, 1);
                let harmless =
                    read.stop == Stop::Clean && all_frames_replayed(&read, &bytes, 1..=4);
                let refused = matches!(read.stop, Stop::Corrupt { .. });
                assert!(
                    harmless || refused,
                    "damage at {at} lost acknowledged records silently: {:?}",
                    read.stop
                );
            }
        }
        assert!(cases > 8 * used / 2);
    }

    #[test]
    fn a_write_cut_anywhere_is_a_torn_tail_never_corruption() {
        // Two groups written over zeros, then over stale records of an
        // earlier generation: the second group is cut at every byte.
        let first_group = frame_offset(2, 1);
        let full = log(1, 1..=4);
        let mut stale = log(1, 1..=6);
        stamp(&mut stale[HEADER_BYTES..frame_offset(6, 1)], 5);
        for background in [vec![0u8; full.len()], stale[..full.len()].to_vec()] {
            for cut in first_group..frame_offset(4, 1) {
                let mut bytes = background.clone();
                bytes[..cut].copy_from_slice(&full[..cut]);
                let header = Header::read(&bytes).unwrap();
                let read = scan(&bytes, &header, 1);
                assert!(
                    !matches!(read.stop, Stop::Corrupt { .. }),
                    "a cut at {cut} was called corruption: {:?}",
                    read.stop
                );
                assert!(read.frames.len() >= 2, "the first group survives any cut");
                let whole = (0..=4).filter(|&n| frame_offset(n, 1) <= cut).count() - 1;
                assert!(
                    read.frames.len() >= whole.min(4),
                    "cut {cut}: {}",
                    read.frames.len()
                );
            }
        }
    }

    #[test]
    fn records_at_or_past_the_next_tx_are_replayed_in_order() {
        let (db, dir) = store(3);
        std::fs::write(dir.join(COMMIT_LOG), log(1, 1..=5)).unwrap();
        let (_wal, report) = recover(&db, &dir, RecoverMode::Refuse).unwrap();
        assert_eq!(report.replayed, 3);
        assert!(!report.dropped);
        assert_eq!(value(&db, 2), None, "sled had tx 2 already: not replayed");
        assert_eq!(value(&db, 5).as_deref(), Some(&b"v5"[..]));
        assert!(db.get(journal_key(4)).unwrap().is_some());
        assert_eq!(next_tx(&db), 6);
        // The log was emptied (a new generation): a second recovery replays nothing.
        let (_wal, report) = recover(&db, &dir, RecoverMode::Refuse).unwrap();
        assert_eq!(report.replayed, 0);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_torn_last_record_ends_the_log() {
        let (db, dir) = store(1);
        let mut bytes = log(1, 1..=3);
        let third = frame_offset(2, 1);
        // Cut record 3 short: its end (and trailer) was never written.
        bytes[third + 40..].fill(0);
        std::fs::write(dir.join(COMMIT_LOG), &bytes).unwrap();
        let (_wal, report) = recover(&db, &dir, RecoverMode::Refuse).unwrap();
        assert_eq!(report.replayed, 2);
        assert_eq!(report.torn_offset, third as u64);
        assert_eq!(report.torn_tx_id, 3);
        assert_eq!(next_tx(&db), 3);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_flipped_bit_before_intact_records_is_corruption_naming_offset_and_txs() {
        for index in 0..3 {
            let (db, dir) = store(1);
            let mut bytes = log(1, 1..=3);
            let at = frame_offset(index, 1) + FRAME_HEAD_BYTES + 3;
            bytes[at] ^= 0x10;
            std::fs::write(dir.join(COMMIT_LOG), &bytes).unwrap();
            let error = recover(&db, &dir, RecoverMode::Refuse).err().unwrap();
            assert_eq!(error.code, ErrorCode::Corrupt, "record {index}");
            assert_eq!(
                error.details["offset"],
                frame_offset(index, 1).to_string(),
                "record {index}"
            );
            assert_eq!(error.details["firstTxId"], (index + 1).to_string());
            assert_eq!(error.details["lastTxId"], "3");
            assert!(error.message.contains("commit.log"), "{}", error.message);
            // Nothing was applied or changed.
            assert_eq!(next_tx(&db), 1);
            assert_eq!(std::fs::read(dir.join(COMMIT_LOG)).unwrap(), bytes);
            let _ = std::fs::remove_dir_all(&dir);
        }
    }

    #[test]
    fn a_zeroed_length_or_header_is_corruption_not_the_end() {
        for (index, range) in [(1, 16..20), (2, 0..FRAME_HEAD_BYTES), (0, 0..8)] {
            let (db, dir) = store(1);
            let mut bytes = log(1, 1..=3);
            let at = frame_offset(index, 1);
            bytes[at + range.start..at + range.end].fill(0);
            std::fs::write(dir.join(COMMIT_LOG), &bytes).unwrap();
            let error = recover(&db, &dir, RecoverMode::Refuse).err().unwrap();
            assert_eq!(error.code, ErrorCode::Corrupt);
            assert_eq!(error.details["firstTxId"], (index + 1).to_string());
            let _ = std::fs::remove_dir_all(&dir);
        }
    }

    #[test]
    fn damage_to_records_sled_has_already_is_skipped_and_reported() {
        let (db, dir) = store(3);
        let mut bytes = log(1, 1..=4);
        bytes[frame_offset(1, 1) + FRAME_HEAD_BYTES] ^= 1; // tx 2: sled has it
        std::fs::write(dir.join(COMMIT_LOG), &bytes).unwrap();
        let (_wal, report) = recover(&db, &dir, RecoverMode::Refuse).unwrap();
        assert_eq!(report.replayed, 2);
        assert_eq!(report.skipped.len(), 1, "{:?}", report.skipped);
        assert_eq!(next_tx(&db), 5);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_damaged_trailer_or_padding_loses_nothing() {
        let (db, dir) = store(1);
        let mut bytes = log(1, 1..=2);
        let end = frame_offset(2, 1);
        bytes[end - 3] ^= 0xff; // the last record's trailer
        std::fs::write(dir.join(COMMIT_LOG), &bytes).unwrap();
        let (_wal, report) = recover(&db, &dir, RecoverMode::Refuse).unwrap();
        assert_eq!(report.replayed, 2);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn truncate_mode_replays_the_intact_prefix_and_never_reuses_ids() {
        let (db, dir) = store(1);
        let mut bytes = log(1, 1..=4);
        bytes[frame_offset(2, 1) + FRAME_HEAD_BYTES] ^= 4; // tx 3
        std::fs::write(dir.join(COMMIT_LOG), &bytes).unwrap();
        let mut hwm = Hwm::open(&dir).unwrap();
        hwm.raise(100).unwrap();
        drop(hwm);
        let (_wal, report) = recover(&db, &dir, RecoverMode::Truncate).unwrap();
        assert_eq!(report.replayed, 2);
        assert!(report.dropped);
        assert_eq!(report.dropped_first_tx_id, 3);
        assert_eq!(report.dropped_last_tx_id, 4);
        assert_eq!(report.dropped_offset, frame_offset(2, 1) as u64);
        assert_eq!(value(&db, 4), None);
        assert_eq!(report.next_tx_id, 100, "jumps to the high-water mark");
        assert_eq!(next_tx(&db), 100);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_missing_emptied_or_headerless_log_of_an_opened_store_is_corruption() {
        let empty = Vec::new();
        let zeros = vec![0u8; 4096];
        let mut old = Vec::new();
        old.extend_from_slice(&(3u32).to_le_bytes());
        old.extend_from_slice(&[1, 2, 3, 4, 5, 6, 7]);
        for contents in [None, Some(&empty), Some(&zeros), Some(&old)] {
            let (db, dir) = store(5);
            if let Some(contents) = contents {
                std::fs::write(dir.join(COMMIT_LOG), contents).unwrap();
            }
            let error = recover(&db, &dir, RecoverMode::Refuse).err().unwrap();
            assert_eq!(error.code, ErrorCode::Corrupt);
            assert_eq!(error.details["reason"], "missing_log");
            let (_wal, report) = recover(&db, &dir, RecoverMode::Truncate).unwrap();
            assert!(report.dropped);
            // A fresh log: the next open is clean.
            let (_wal, report) = recover(&db, &dir, RecoverMode::Refuse).unwrap();
            assert!(!report.dropped);
            let _ = std::fs::remove_dir_all(&dir);
        }
        // A new store has no log yet: that is fine.
        let (db, dir) = store(1);
        Wal::recover(&db, &dir, false, RecoverMode::Refuse, &map).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_lost_log_never_lets_ids_be_reused() {
        let (db, dir) = store(1);
        let (mut wal, _) = Wal::recover(&db, &dir, false, RecoverMode::Refuse, &map).unwrap();
        let mut frames = Vec::new();
        for tx in 1..=3 {
            frame(tx, &record(tx), &mut frames);
        }
        wal.append_durably(&mut frames).unwrap();
        drop(wal);
        std::fs::remove_file(dir.join(COMMIT_LOG)).unwrap();
        let (_wal, report) = recover(&db, &dir, RecoverMode::Truncate).unwrap();
        assert!(report.next_tx_id > 3, "{}", report.next_tx_id);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_gap_between_the_store_and_the_log_is_corruption() {
        let (db, dir) = store(1);
        std::fs::write(dir.join(COMMIT_LOG), log(3, 3..=4)).unwrap();
        let error = recover(&db, &dir, RecoverMode::Refuse).err().unwrap();
        assert_eq!(error.code, ErrorCode::Corrupt);
        assert!(error.message.contains("do not belong together"));

        let (db, dir2) = store(1);
        let mut bytes = log(1, []);
        let mut frames = Vec::new();
        frame(1, &[0xff, 0xff, 0xff], &mut frames); // a valid frame, not a record
        stamp(&mut frames, 7);
        bytes[HEADER_BYTES..HEADER_BYTES + frames.len()].copy_from_slice(&frames);
        std::fs::write(dir2.join(COMMIT_LOG), bytes).unwrap();
        let error = recover(&db, &dir2, RecoverMode::Refuse).err().unwrap();
        assert_eq!(error.code, ErrorCode::Corrupt);
        let _ = std::fs::remove_dir_all(&dir);
        let _ = std::fs::remove_dir_all(&dir2);
    }

    #[test]
    fn appends_survive_recovery_and_stale_generations_are_ignored() {
        let (db, dir) = store(1);
        let (mut wal, _) = Wal::recover(&db, &dir, false, RecoverMode::Refuse, &map).unwrap();
        let mut frames = Vec::new();
        frame(1, &record(1), &mut frames);
        frame(2, &record(2), &mut frames);
        wal.append_durably(&mut frames).unwrap();
        let mut more = Vec::new();
        frame(3, &record(3), &mut more);
        wal.append_durably(&mut more).unwrap();
        assert_eq!(
            wal.size(),
            (HEADER_BYTES + frames.len() + more.len()) as u64
        );
        drop(wal);
        let (mut wal, report) = recover(&db, &dir, RecoverMode::Refuse).unwrap();
        assert_eq!(report.replayed, 3);
        // The new generation holds one record; three stale ones follow it.
        let mut frames = Vec::new();
        frame(4, &record(4), &mut frames);
        wal.append_durably(&mut frames).unwrap();
        drop(wal);
        let (_wal, report) = recover(&db, &dir, RecoverMode::Refuse).unwrap();
        assert_eq!(report.replayed, 1, "tx 4, not the stale 2 and 3 behind it");
        assert_eq!(value(&db, 4).as_deref(), Some(&b"v4"[..]));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
