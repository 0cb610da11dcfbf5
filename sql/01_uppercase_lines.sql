-- Course program: upper-case the lines of the text files dropped into a directory (lab 10,
-- step 1: `ssc.textFileStream(dir).map(lambda line: line.upper()).pprint()`). The Rust twin is
-- examples/01_uppercase_lines.rs.
--
--   cargo run -- run sql/01_uppercase_lines.sql
--
-- Reads the files already in data/lines, one file per batch, then stops (available_now). To watch
-- the directory instead, leave out the trigger; then move new files into it (write them elsewhere
-- first: a file must appear whole) and each one's lines appear upper-cased; Ctrl-C stops.

CREATE TABLE lines (value VARCHAR)
WITH (connector = 'files', format = 'text', path = 'data/lines', max_files_per_trigger = '1');

CREATE TABLE upper_lines
WITH (connector = 'console', trigger = 'available_now', truncate = 'false');

INSERT INTO upper_lines SELECT upper(value) AS line FROM lines;
