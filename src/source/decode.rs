//! Turning one input file's bytes into record batches, with Spark's modes for malformed records.
//!
//! # Background
//! Records are always decoded against the stream's whole declared schema, and the read's
//! projection is applied afterwards: whether a record is malformed never depends on which columns
//! a query reads, so `count(*)` counts the rows `SELECT *` returns (a CSV decoder given only the
//! projected columns would call every record malformed for its field count).
//!
//! A record is one line of a JSON file (Spark's default, `multiLine = false`) or one CSV record as
//! the CSV reader delimits it (a quoted field may span lines; without quotes, a line). A CSV file
//! is first decoded whole, batch by batch; from the first batch that fails on, and for JSON
//! always, records are decoded in chunks. A CSV record with the wrong number of fields is
//! malformed at once (finding the records counted them). A chunk that decodes is kept whole; when
//! one fails, the record the CSV decoder names (once it fails on its own too) is malformed and the
//! records around it are decoded again; otherwise the chunk is cut into small pieces, and a
//! failing piece in halves, until the bad records stand alone. A bad record thus costs about one
//! more decode of its chunk, chunks shrink after a failure and grow back slowly, and good records
//! next to a bad one are never lost. Each bad record is kept as nulls (its raw text in
//! `_corrupt_record`), dropped, or reported with its line, as the mode says.
//!
//! JSON records nested deeper than [`MAX_JSON_DEPTH`] are malformed before they reach arrow, whose
//! error message for a mistyped value is built by recursion over the value.

use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use datafusion::arrow::array::{ArrayRef, RecordBatch, RecordBatchOptions, StringArray, StringBuilder, new_null_array};
use datafusion::arrow::compute::{BatchCoalescer, cast};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::error::ArrowError;
use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use super::{FileFormat, MalformedMode};
use crate::error::{Error, Result, clip};

/// Why a run of records did not decode.
#[derive(Debug)]
struct Failure {
    /// In the user's terms.
    reason: String,
    /// Rows of the run the decoder's message names (counted from 0), to be confirmed.
    rows: Vec<usize>,
}

/// How deep [`DecodePlan::decode_span`] trusts the rows a decoder names before it cuts records
/// into pieces instead: one level per column in the normal case.
const MAX_NAMED_DEPTH: usize = 64;

/// Name of the optional column that receives the raw text of a malformed record.
pub(crate) const CORRUPT_RECORD_COLUMN: &str = "_corrupt_record";

/// Rows per record batch produced by the decoders.
const BATCH_SIZE: usize = 8192;

/// Records per piece when a chunk with a bad record is cut up, and what a chunk grows by after
/// each chunk that decodes: after a failure chunks restart this small, since a failed chunk is
/// decoded in vain. `cargo bench --bench malformed_records` measures the cost (one bad line in a
/// thousand: half of them with a field too many, half with a value that does not parse).
const PIECE: usize = 64;

/// Deepest nesting of arrays and objects in a JSON record; deeper records are malformed. The
/// limit Jackson (and so Spark) applies by default.
pub(crate) const MAX_JSON_DEPTH: usize = 1000;

/// What decoding one file produced.
#[derive(Debug, Default)]
pub(crate) struct Decoded {
    pub(crate) batches: Vec<RecordBatch>,
    /// Malformed records kept as nulls (`permissive`).
    pub(crate) malformed: u64,
    /// Malformed records dropped (`drop_malformed`).
    pub(crate) dropped: u64,
}

/// How to decode the files of one read: the declared schema and where the `_corrupt_record`
/// column sits in it, if it was declared.
#[derive(Debug, Clone)]
pub(crate) struct DecodePlan {
    pub(crate) format: FileFormat,
    pub(crate) mode: MalformedMode,
    /// The schema of the rows handed out.
    pub(crate) output: SchemaRef,
    /// `output` without the `_corrupt_record` column: what the format decoder produces.
    pub(crate) data: SchemaRef,
    /// Position of `_corrupt_record` in `output`.
    pub(crate) corrupt_index: Option<usize>,
}

/// One record of a line format: its bytes in the file (with the line end), its first line, and
/// for CSV its number of fields.
#[derive(Debug, Clone)]
struct Record {
    bytes: Range<usize>,
    line: u64,
    fields: Option<usize>,
}

impl DecodePlan {
    pub(crate) fn new(format: FileFormat, mode: MalformedMode, output: SchemaRef) -> Self {
        let corrupt_index = output.index_of(CORRUPT_RECORD_COLUMN).ok();
        let data_fields: Vec<_> = output
            .fields()
            .iter()
            .filter(|f| f.name() != CORRUPT_RECORD_COLUMN)
            .cloned()
            .collect();
        DecodePlan {
            format,
            mode,
            data: Arc::new(Schema::new(data_fields)),
            output,
            corrupt_index,
        }
    }

    /// Decodes one whole file.
    pub(crate) fn decode(&self, file: &str, bytes: Bytes) -> Result<Decoded> {
        match &self.format {
            FileFormat::Parquet => self.decode_parquet(file, bytes),
            FileFormat::Text => self.decode_text(file, bytes),
            FileFormat::Json => {
                let mut out = Output::new(self, file);
                self.decode_records(&bytes, &json_records(&bytes), &mut out)?;
                out.finish()
            }
            FileFormat::Csv { header, delimiter } => {
                let mut out = Output::new(self, file);
                if let Some(start) = self.decode_csv_whole(&bytes, *header, *delimiter, &mut out)? {
                    let records = csv_records(&bytes, start, *header && start == 0, *delimiter);
                    self.decode_records(&bytes, &records, &mut out)?;
                }
                out.finish()
            }
        }
    }

    /// Decodes a CSV file batch by batch from its start, and returns where the first batch that
    /// failed began (everything before it is in `out`), or `None` when the whole file decoded.
    fn decode_csv_whole(
        &self,
        bytes: &[u8],
        header: bool,
        delimiter: u8,
        out: &mut Output<'_>,
    ) -> Result<Option<usize>> {
        let mut decoder = self.csv_decoder(BATCH_SIZE, header, delimiter);
        let (mut batch_start, mut pos) = (0, 0);
        loop {
            let Ok(consumed) = decoder.decode(&bytes[pos..]) else {
                return Ok(Some(batch_start));
            };
            pos += consumed;
            let at_end = pos == bytes.len();
            // An empty slice tells the decoder the input ended (a last line without a line end).
            if at_end && decoder.decode(&[]).is_err() {
                return Ok(Some(batch_start));
            }
            if decoder.capacity() > 0 && !at_end {
                if consumed == 0 {
                    return Ok(Some(batch_start));
                }
                continue;
            }
            match decoder.flush() {
                Ok(Some(batch)) => out.push(batch)?,
                Ok(None) => {}
                Err(_) => return Ok(Some(batch_start)),
            }
            if at_end {
                return Ok(None);
            }
            batch_start = pos;
        }
    }

    /// Decodes `records` in order. A CSV record whose number of fields is not the number of
    /// declared columns is malformed without a decode (the CSV reader that found its bounds
    /// counted them); the runs of records between such ones are decoded by [`Self::decode_run`].
    fn decode_records(&self, bytes: &[u8], records: &[Record], out: &mut Output<'_>) -> Result<()> {
        let declared = self.data.fields().len();
        let mut rest = records;
        while let Some(bad) = rest.iter().position(|r| r.fields.is_some_and(|n| n != declared)) {
            self.decode_run(bytes, &rest[..bad], out)?;
            let record = &rest[bad];
            let reason = format!(
                "{} fields, but the stream declares {declared} columns",
                record.fields.unwrap_or_default()
            );
            out.malformed(&bytes[record.bytes.clone()], record.line, &reason)?;
            rest = &rest[bad + 1..];
        }
        self.decode_run(bytes, rest, out)
    }

    /// Decodes `records` chunk by chunk; chunks shrink to [`PIECE`] records after one fails and
    /// grow back while they decode.
    fn decode_run(&self, bytes: &[u8], records: &[Record], out: &mut Output<'_>) -> Result<()> {
        let mut size = BATCH_SIZE;
        let mut rest = records;
        while !rest.is_empty() {
            let (chunk, tail) = rest.split_at(size.min(rest.len()));
            rest = tail;
            size = if self.decode_span(bytes, chunk, out, 0)? {
                size.saturating_add(PIECE).min(BATCH_SIZE)
            } else {
                PIECE
            };
        }
        Ok(())
    }

    /// Decodes `records`, keeping every one that decodes; false when some did not.
    ///
    /// When the decoder names the row it failed on and that record fails alone too, it is
    /// malformed: the records before it are decoded again (`depth` deeper), and the ones after it
    /// go on in this loop, so a bad record costs about one decode of its chunk. Otherwise the
    /// records are cut into pieces until the bad ones stand alone.
    fn decode_span(&self, bytes: &[u8], records: &[Record], out: &mut Output<'_>, depth: usize) -> Result<bool> {
        let mut rest = records;
        let mut clean = true;
        while !rest.is_empty() {
            let failure = match self.decode_chunk(bytes, rest, out) {
                Ok(batch) => {
                    out.push(batch)?;
                    return Ok(clean);
                }
                Err(failure) => failure,
            };
            clean = false;
            if let [record] = rest {
                out.malformed(&bytes[record.bytes.clone()], record.line, &failure.reason)?;
                return Ok(false);
            }
            match self.confirmed_bad(bytes, rest, &failure, depth, out) {
                Some((bad, reason)) => {
                    self.decode_span(bytes, &rest[..bad], out, depth + 1)?;
                    let record = &rest[bad];
                    out.malformed(&bytes[record.bytes.clone()], record.line, &reason)?;
                    rest = &rest[bad + 1..];
                }
                None => {
                    let piece = if rest.len() > PIECE {
                        PIECE
                    } else {
                        rest.len().div_ceil(2)
                    };
                    for part in rest.chunks(piece) {
                        self.decode_span(bytes, part, out, depth + 1)?;
                    }
                    return Ok(false);
                }
            }
        }
        Ok(clean)
    }

    /// The record among `records` that `failure` names and that fails on its own too, with why.
    ///
    /// # Background
    /// The CSV decoder parses one column at a time and stops at the first value that does not
    /// parse, naming its row. The records before it then fail, if at all, in a later column, so
    /// trusting the name nests at most one level per column; the name is read from the message
    /// (a value could fake one), so it is used only once the record alone fails, and only up to
    /// a nesting of [`MAX_NAMED_DEPTH`].
    fn confirmed_bad(
        &self,
        bytes: &[u8],
        records: &[Record],
        failure: &Failure,
        depth: usize,
        out: &mut Output<'_>,
    ) -> Option<(usize, String)> {
        if depth >= MAX_NAMED_DEPTH {
            return None;
        }
        failure
            .rows
            .iter()
            .filter(|row| **row < records.len())
            .find_map(|&row| {
                let alone = self.decode_chunk(bytes, &records[row..=row], out).err()?;
                Some((row, alone.reason))
            })
    }

    /// Decodes a run of consecutive records with one decoder; fails unless each gives one row.
    fn decode_chunk(&self, bytes: &[u8], records: &[Record], out: &mut Output<'_>) -> Result<RecordBatch, Failure> {
        let (Some(first), Some(last)) = (records.first(), records.last()) else {
            return Ok(RecordBatch::new_empty(self.data.clone()));
        };
        let unnamed = |reason: String| Failure {
            reason,
            rows: Vec::new(),
        };
        let batch = match &self.format {
            FileFormat::Json => self.decode_json_lines(bytes, records).map_err(unnamed),
            FileFormat::Csv { delimiter, .. } => {
                let span = &bytes[first.bytes.start..last.bytes.end];
                // A decoder that gave whole records so far takes the next ones; arrow numbers its
                // rows from its first, so names in its messages count from `before`.
                // One record alone (a suspect being confirmed) gets a decoder of its own, sized
                // for it: a decoder's buffers are allocated for its batch size up front.
                let alone = records.len() == 1;
                let (mut decoder, before) = match out.csv_decoder.take() {
                    Some(kept) if !alone => kept,
                    kept => {
                        out.csv_decoder = kept;
                        let size = if alone { 1 } else { BATCH_SIZE };
                        (self.csv_decoder(size, false, *delimiter), 0)
                    }
                };
                // A span ending in `\r\n` leaves the reader's state machine mid-terminator:
                // only a plain `\n` ends one that can take more.
                let ends_line = span.ends_with(b"\n") && !span.ends_with(b"\r\n");
                match decode_all(&mut decoder, span, !ends_line) {
                    Ok(batch) => {
                        let batch = batch.unwrap_or_else(|| RecordBatch::new_empty(self.data.clone()));
                        if ends_line && !alone && batch.num_rows() == records.len() {
                            out.csv_decoder = Some((decoder, before + batch.num_rows()));
                        }
                        Ok(batch)
                    }
                    Err(e) => Err(Failure {
                        rows: named_rows(&e.to_string())
                            .into_iter()
                            .filter_map(|row| row.checked_sub(before))
                            .collect(),
                        reason: self.csv_reason(span, e),
                    }),
                }
            }
            FileFormat::Parquet | FileFormat::Text => Err(unnamed("not a line format".to_string())),
        }?;
        if batch.num_rows() != records.len() {
            return Err(unnamed(format!(
                "{} rows decoded from {} records",
                batch.num_rows(),
                records.len()
            )));
        }
        Ok(batch)
    }

    /// Feeds JSON lines one at a time, so that a line holding anything but one whole value fails.
    fn decode_json_lines(&self, bytes: &[u8], records: &[Record]) -> Result<RecordBatch, String> {
        let mut decoder = datafusion::arrow::json::ReaderBuilder::new(self.data.clone())
            .with_batch_size(records.len())
            .build_decoder()
            .map_err(|e| e.to_string())?;
        for record in records {
            let line = &bytes[record.bytes.clone()];
            if json_depth_exceeds(line, MAX_JSON_DEPTH) {
                return Err(format!("nested deeper than {MAX_JSON_DEPTH} levels"));
            }
            let before = decoder.len();
            let consumed = decoder.decode(line).map_err(|e| e.to_string())?;
            if decoder.has_partial_record() {
                return Err("the JSON value does not end on its line".to_string());
            }
            if consumed < line.len() || decoder.len() != before + 1 {
                return Err("a line must hold exactly one JSON object".to_string());
            }
        }
        match decoder.flush() {
            Ok(batch) => Ok(batch.unwrap_or_else(|| RecordBatch::new_empty(self.data.clone()))),
            Err(e) => Err(e.to_string()),
        }
    }

    fn csv_decoder(&self, batch_size: usize, header: bool, delimiter: u8) -> datafusion::arrow::csv::reader::Decoder {
        datafusion::arrow::csv::ReaderBuilder::new(self.data.clone())
            .with_batch_size(batch_size)
            .with_header(header)
            .with_delimiter(delimiter)
            .build_decoder()
    }

    /// Why CSV bytes did not decode, in the user's terms where arrow's words would mislead
    /// (arrow counts lines from the start of what it was given, not of the file).
    fn csv_reason(&self, span: &[u8], error: ArrowError) -> String {
        let FileFormat::Csv { delimiter, .. } = self.format else {
            return error.to_string();
        };
        // Only a count of fields gets other words (a CSV reader costs a state machine to build).
        if !error.to_string().contains("number of fields") {
            return drop_line_number(&error.to_string());
        }
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .delimiter(delimiter)
            .from_reader(span);
        let mut record = csv::ByteRecord::new();
        let declared = self.data.fields().len();
        if matches!(reader.read_byte_record(&mut record), Ok(true)) && record.len() != declared {
            return format!("{} fields, but the stream declares {declared} columns", record.len());
        }
        drop_line_number(&error.to_string())
    }

    /// Adds the `_corrupt_record` column (null, or `raw` for every row) when the output has one.
    fn with_corrupt_column(&self, batch: RecordBatch, raw: Option<&str>) -> Result<RecordBatch> {
        let Some(index) = self.corrupt_index else {
            return Ok(batch);
        };
        let mut columns: Vec<ArrayRef> = batch.columns().to_vec();
        let corrupt: ArrayRef = match raw {
            Some(raw) => Arc::new(StringArray::from(vec![raw; batch.num_rows()])),
            None => new_null_array(&DataType::Utf8, batch.num_rows()),
        };
        let corrupt_type = self.output.field(index).data_type();
        let corrupt =
            cast(&corrupt, corrupt_type).map_err(|e| Error::Internal(format!("_corrupt_record column: {e}")))?;
        columns.insert(index, corrupt);
        RecordBatch::try_new_with_options(
            self.output.clone(),
            columns,
            &RecordBatchOptions::new().with_row_count(Some(batch.num_rows())),
        )
        .map_err(|e| Error::Internal(format!("adding _corrupt_record: {e}")))
    }

    /// One row per line; see [`text_lines`].
    fn decode_text(&self, file: &str, bytes: Bytes) -> Result<Decoded> {
        let mut lines: Vec<&[u8]> = bytes
            .split(|b| *b == b'\n')
            .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
            .collect();
        if lines.last().is_some_and(|l| l.is_empty()) {
            lines.pop();
        }
        let mut decoded = Decoded::default();
        for (i, chunk) in lines.chunks(BATCH_SIZE).enumerate() {
            let first_line = (i * BATCH_SIZE) as u64 + 1;
            let text = text_lines(self.mode, file, first_line, chunk.iter().copied())?;
            decoded.malformed += text.malformed;
            decoded.dropped += text.dropped;
            let rows = text.kept.len();
            let columns = self
                .output
                .fields()
                .iter()
                .enumerate()
                .map(|(i, f)| {
                    let column: ArrayRef = match self.corrupt_index == Some(i) {
                        true => Arc::new(text.corrupt.clone()),
                        false => Arc::new(text.values.clone()),
                    };
                    cast(&column, f.data_type())
                })
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| Error::Internal(format!("text column: {e}")))?;
            decoded.batches.push(
                RecordBatch::try_new_with_options(
                    self.output.clone(),
                    columns,
                    &RecordBatchOptions::new().with_row_count(Some(rows)),
                )
                .map_err(|e| Error::Internal(format!("text batch: {e}")))?,
            );
        }
        Ok(decoded)
    }

    /// Reads a Parquet file and aligns its columns to the declared schema by name: a missing
    /// column reads as nulls, a column of another type is cast (or the file is refused).
    fn decode_parquet(&self, file: &str, bytes: Bytes) -> Result<Decoded> {
        let input_error = |message: String| Error::Input {
            file: file.to_string(),
            line: None,
            message,
        };
        let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)
            .and_then(|b| b.with_batch_size(BATCH_SIZE).build())
            .map_err(|e| input_error(format!("not a readable Parquet file: {e}")))?;
        let mut batches = Vec::new();
        for batch in reader {
            let batch = batch.map_err(|e| input_error(format!("reading Parquet: {e}")))?;
            let columns = self
                .data
                .fields()
                .iter()
                .map(|field| align_column(&batch, field).map_err(&input_error))
                .collect::<Result<Vec<_>>>()?;
            let aligned = RecordBatch::try_new_with_options(
                self.data.clone(),
                columns,
                &RecordBatchOptions::new().with_row_count(Some(batch.num_rows())),
            )
            .map_err(|e| input_error(format!("column types: {e}")))?;
            batches.push(self.with_corrupt_column(aligned, None)?);
        }
        Ok(Decoded {
            batches,
            ..Decoded::default()
        })
    }
}

/// Lines of text as values, with Spark's modes for a malformed line: one that is not UTF-8, or
/// longer than the source takes.
#[derive(Debug)]
pub(crate) struct TextLines {
    /// The kept lines' values (null for a malformed line kept in `permissive` mode).
    pub(crate) values: StringArray,
    /// The kept lines' `_corrupt_record`: the malformed line's text (bad bytes replaced by
    /// U+FFFD), null for a good line.
    pub(crate) corrupt: StringArray,
    /// Which of the given lines were kept, in order.
    pub(crate) kept: Vec<usize>,
    pub(crate) malformed: u64,
    pub(crate) dropped: u64,
}

/// Decodes `lines` (without their line ends) as UTF-8 text; `first_line` is the first one's
/// 1-based number in `source`, for the error of `fail_fast` mode. A line longer than
/// [`MAX_LINE_BYTES`](super::socket::MAX_LINE_BYTES) is malformed too.
pub(crate) fn text_lines<'a>(
    mode: MalformedMode,
    source: &str,
    first_line: u64,
    lines: impl IntoIterator<Item = &'a [u8]>,
) -> Result<TextLines> {
    let (mut values, mut corrupt) = (StringBuilder::new(), StringBuilder::new());
    let mut out = TextLines {
        values: StringArray::new_null(0),
        corrupt: StringArray::new_null(0),
        kept: Vec::new(),
        malformed: 0,
        dropped: 0,
    };
    for (i, line) in lines.into_iter().enumerate() {
        let problem = match std::str::from_utf8(line) {
            Ok(text) if line.len() <= super::socket::MAX_LINE_BYTES => {
                values.append_value(text);
                corrupt.append_null();
                out.kept.push(i);
                continue;
            }
            Ok(_) => format!("the line is longer than {} bytes", super::socket::MAX_LINE_BYTES),
            Err(e) => format!("the line is not valid UTF-8 (at byte {})", e.valid_up_to()),
        };
        match mode {
            MalformedMode::FailFast => {
                return Err(Error::Input {
                    file: source.to_string(),
                    line: Some(first_line + i as u64),
                    message: format!("{problem}: {}", String::from_utf8_lossy(line)),
                });
            }
            MalformedMode::DropMalformed => out.dropped += 1,
            MalformedMode::Permissive => {
                values.append_null();
                corrupt.append_value(String::from_utf8_lossy(line));
                out.kept.push(i);
                out.malformed += 1;
            }
        }
    }
    out.values = values.finish();
    out.corrupt = corrupt.finish();
    Ok(out)
}

/// Where decoded rows of one file go: kept rows in order, coalesced into batches of
/// [`BATCH_SIZE`], and the malformed-record mode applied to each bad record.
struct Output<'a> {
    plan: &'a DecodePlan,
    file: &'a str,
    coalescer: BatchCoalescer,
    decoded: Decoded,
    /// The CSV decoder of the file's records, with the rows it gave, while every chunk it was
    /// given decoded: building one costs more than decoding a small chunk (its reader builds a
    /// state machine), and a chunk that fails leaves it unusable.
    csv_decoder: Option<(datafusion::arrow::csv::reader::Decoder, usize)>,
}

impl<'a> Output<'a> {
    fn new(plan: &'a DecodePlan, file: &'a str) -> Self {
        let coalescer = BatchCoalescer::new(plan.output.clone(), BATCH_SIZE)
            // Whole batches of a clean file pass through without a copy.
            .with_biggest_coalesce_batch_size(Some(BATCH_SIZE / 2));
        Output {
            plan,
            file,
            coalescer,
            decoded: Decoded::default(),
            csv_decoder: None,
        }
    }

    /// Keeps decoded rows (of the plan's `data` schema).
    fn push(&mut self, batch: RecordBatch) -> Result<()> {
        let batch = self.plan.with_corrupt_column(batch, None)?;
        self.push_output(batch)
    }

    fn push_output(&mut self, batch: RecordBatch) -> Result<()> {
        self.coalescer
            .push_batch(batch)
            .map_err(|e| Error::Internal(format!("coalescing decoded rows: {e}")))?;
        while let Some(batch) = self.coalescer.next_completed_batch() {
            self.decoded.batches.push(batch);
        }
        Ok(())
    }

    /// Applies the mode to a record that did not decode.
    fn malformed(&mut self, raw: &[u8], line: u64, reason: &str) -> Result<()> {
        match self.plan.mode {
            MalformedMode::FailFast => Err(Error::Input {
                file: self.file.to_string(),
                line: Some(line),
                message: format!("malformed record ({}); mode is fail_fast", clip(reason)),
            }),
            MalformedMode::DropMalformed => {
                self.decoded.dropped += 1;
                Ok(())
            }
            MalformedMode::Permissive => {
                self.decoded.malformed += 1;
                let raw = String::from_utf8_lossy(trim_line_end(raw));
                let nulls = self.plan.with_corrupt_column(null_row(&self.plan.data)?, Some(&raw))?;
                self.push_output(nulls)
            }
        }
    }

    fn finish(mut self) -> Result<Decoded> {
        self.coalescer
            .finish_buffered_batch()
            .map_err(|e| Error::Internal(format!("coalescing decoded rows: {e}")))?;
        while let Some(batch) = self.coalescer.next_completed_batch() {
            self.decoded.batches.push(batch);
        }
        Ok(self.decoded)
    }
}

/// Feeds `input` to a CSV decoder to its end and takes every row.
/// Decodes `input` whole; with `at_end`, it is the end of the input too (its last record may
/// lack a line end), and the decoder is not to take more.
fn decode_all(
    decoder: &mut datafusion::arrow::csv::reader::Decoder,
    input: &[u8],
    at_end: bool,
) -> Result<Option<RecordBatch>, ArrowError> {
    let mut rest = input;
    while !rest.is_empty() {
        let consumed = decoder.decode(rest)?;
        if consumed == 0 {
            // A full decoder leaves the `\n` of a last record's `\r\n` unread: nothing is lost.
            if rest.iter().all(|b| matches!(b, b'\r' | b'\n')) {
                break;
            }
            return Err(ArrowError::CsvError("more records than expected".to_string()));
        }
        rest = &rest[consumed..];
    }
    if at_end {
        decoder.decode(&[])?;
    }
    decoder.flush()
}

fn align_column(batch: &RecordBatch, field: &Field) -> Result<ArrayRef, String> {
    match batch.column_by_name(field.name()) {
        None => Ok(new_null_array(field.data_type(), batch.num_rows())),
        Some(column) if column.data_type() == field.data_type() => Ok(column.clone()),
        Some(column) => cast(column, field.data_type()).map_err(|e| {
            format!(
                "column '{}' is {} in the file but declared {}: {e}",
                field.name(),
                column.data_type(),
                field.data_type()
            )
        }),
    }
}

/// One row of nulls in `schema`.
fn null_row(schema: &SchemaRef) -> Result<RecordBatch> {
    let columns = schema
        .fields()
        .iter()
        .map(|f| new_null_array(f.data_type(), 1))
        .collect();
    RecordBatch::try_new(schema.clone(), columns).map_err(|e| {
        Error::plan(format!(
            "a malformed record cannot be kept as nulls because a column is NOT NULL ({e}); use mode drop_malformed"
        ))
    })
}

/// The records of a JSON file: its lines that are not blank.
fn json_records(bytes: &[u8]) -> Vec<Record> {
    let mut records = Vec::new();
    let mut start = 0;
    let mut line = 1;
    while start < bytes.len() {
        let end = bytes[start..]
            .iter()
            .position(|b| *b == b'\n')
            .map_or(bytes.len(), |i| start + i + 1);
        if !bytes[start..end].iter().all(u8::is_ascii_whitespace) {
            records.push(Record {
                bytes: start..end,
                line,
                fields: None,
            });
        }
        start = end;
        line += 1;
    }
    records
}

/// The records of a CSV file from byte `start` on (a record boundary), as the CSV reader
/// delimits them: a quoted field may hold line ends. Each record's bytes run to the next one's
/// start, so blank lines between records go with the record before.
fn csv_records(bytes: &[u8], start: usize, skip_header: bool, delimiter: u8) -> Vec<Record> {
    let first_line = 1 + memchr::memchr_iter(b'\n', &bytes[..start]).count() as u64;
    let rest = &bytes[start..];
    // Without quotes, and with every `\r` part of a `\r\n`, records are lines.
    let lines_only = memchr::memchr(b'"', rest).is_none()
        && memchr::memchr_iter(b'\r', rest).all(|at| rest.get(at + 1) == Some(&b'\n'));
    if lines_only {
        return unquoted_csv_records(bytes, start, first_line, skip_header, delimiter);
    }
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .delimiter(delimiter)
        .from_reader(&bytes[start..]);
    let mut record = csv::ByteRecord::new();
    let mut starts: Vec<(usize, u64, usize)> = Vec::new();
    // Reading bytes from memory cannot fail: the reader checks no encoding for byte records.
    while let Ok(true) = reader.read_byte_record(&mut record) {
        let Some(position) = record.position() else { break };
        let offset = usize::try_from(position.byte())
            .unwrap_or(usize::MAX)
            .saturating_add(start);
        starts.push((offset.min(bytes.len()), first_line + position.line() - 1, record.len()));
    }
    if skip_header && !starts.is_empty() {
        starts.remove(0);
    }
    let ends = starts.iter().skip(1).map(|(offset, ..)| *offset).chain([bytes.len()]);
    starts
        .iter()
        .zip(ends)
        .map(|((begin, line, fields), end)| Record {
            bytes: *begin..end,
            line: *line,
            fields: Some(*fields),
        })
        .collect()
}

/// [`csv_records`] for CSV bytes without a quote character or a lone `\r`, where every line is a
/// record: found with `memchr` at memory speed, where the CSV reader takes about half as long as
/// decoding them. Blank lines go with the record before, as the CSV reader skips them.
fn unquoted_csv_records(bytes: &[u8], start: usize, first_line: u64, skip_header: bool, delimiter: u8) -> Vec<Record> {
    let mut records: Vec<Record> = Vec::new();
    let (mut begin, mut line) = (start, first_line);
    while begin < bytes.len() {
        let end = memchr::memchr(b'\n', &bytes[begin..]).map_or(bytes.len(), |i| begin + i + 1);
        let text = &bytes[begin..end];
        let text = text.strip_suffix(b"\n").unwrap_or(text);
        let text = text.strip_suffix(b"\r").unwrap_or(text);
        match records.last_mut() {
            Some(previous) if text.is_empty() => previous.bytes.end = end,
            _ if text.is_empty() => {}
            _ => records.push(Record {
                bytes: begin..end,
                line,
                fields: Some(1 + memchr::memchr_iter(delimiter, text).count()),
            }),
        }
        begin = end;
        line += 1;
    }
    if skip_header && !records.is_empty() {
        records.remove(0);
    }
    records
}

/// True when arrays and objects in `line` nest deeper than `limit` (brackets inside strings do
/// not count). Only lines with more than `limit` opening brackets are scanned.
fn json_depth_exceeds(line: &[u8], limit: usize) -> bool {
    if line.iter().filter(|b| matches!(b, b'[' | b'{')).count() <= limit {
        return false;
    }
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for b in line {
        match (in_string, escaped, b) {
            (true, true, _) => escaped = false,
            (true, false, b'\\') => escaped = true,
            (true, false, b'"') => in_string = false,
            (true, false, _) => {}
            (false, _, b'"') => in_string = true,
            (false, _, b'[' | b'{') => {
                depth += 1;
                if depth > limit {
                    return true;
                }
            }
            (false, _, b']' | b'}') => depth = depth.saturating_sub(1),
            (false, _, _) => {}
        }
    }
    false
}

fn trim_line_end(raw: &[u8]) -> &[u8] {
    let mut raw = raw;
    while let [rest @ .., b'\n' | b'\r'] = raw {
        raw = rest;
    }
    raw
}

/// Arrow's CSV messages without their "at line N", which counts from the start of the chunk it
/// was given rather than of the file (the error names the file's line itself).
/// Every row number a CSV decoder's message names as `at line <n>` (rows of what it was given,
/// from 0, as arrow counts them without a header).
fn named_rows(message: &str) -> Vec<usize> {
    const AT_LINE: &str = " at line ";
    message
        .match_indices(AT_LINE)
        .filter_map(|(at, _)| {
            let rest = &message[at + AT_LINE.len()..];
            let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
            rest[..digits].parse().ok()
        })
        .collect()
}

fn drop_line_number(message: &str) -> String {
    const AT_LINE: &str = " at line ";
    let Some(at) = message.find(AT_LINE) else {
        return message.to_string();
    };
    let rest = &message[at + AT_LINE.len()..];
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    format!("{}{}", &message[..at], &rest[digits..])
}
