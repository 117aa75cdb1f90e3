"""Writing gzip TFRecord shards fast: records framed in batches, gzip at a fast level.

Beam's `WriteToTFRecord` frames each record in Python and compresses at zlib's default level 6,
which was the single largest cost of the job on MovieLens-1M (profiled with py-spy). This sink
writes the same format (TFRecord framing with masked CRC32C, gzip stream), readable by
`tf.data.TFRecordDataset(..., compression_type="GZIP")` and Beam's `ReadFromTFRecord`, but frames a
whole batch per call and compresses at level 1 (files about 20% larger, several times faster).
"""
from __future__ import annotations

import gzip
import struct
from typing import Iterable

import apache_beam as beam
import google_crc32c
from apache_beam import coders
from apache_beam.io import filebasedsink, iobase
from apache_beam.io.filesystem import CompressionTypes

from mdr_contract import artifacts

GZIP_LEVEL = 1


def _masked_crc32c(data: bytes) -> int:
    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def frame_records(records: Iterable[bytes]) -> bytes:
    """The TFRecord encoding of `records`: per record, length, CRC of length, data, CRC of data."""
    parts = []
    for value in records:
        length = struct.pack("<Q", len(value))
        parts += [length, struct.pack("<I", _masked_crc32c(length)), value,
                  struct.pack("<I", _masked_crc32c(value))]
    return b"".join(parts)


class _GzipTFRecordSink(filebasedsink.FileBasedSink):
    """A FileBasedSink whose elements are already framed TFRecord bytes."""

    def __init__(self, file_path_prefix: str, num_shards: int, compresslevel: int):
        super().__init__(file_path_prefix, coder=coders.BytesCoder(), file_name_suffix=artifacts.RECORD_SUFFIX,
                         num_shards=num_shards, mime_type="application/octet-stream",
                         compression_type=CompressionTypes.UNCOMPRESSED)
        self._level = compresslevel

    def open(self, temp_path):
        raw = super().open(temp_path)
        # mtime=0: identical input gives byte-identical files.
        return gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=self._level, mtime=0)

    def write_encoded_record(self, file_handle, encoded_value):
        file_handle.write(encoded_value)

    def close(self, file_handle):
        raw = file_handle.fileobj
        file_handle.close()  # flushes the gzip trailer; leaves `raw` open
        super().close(raw)


class WriteTFRecords(beam.PTransform):
    """Writes batches (lists) of serialized records as gzip TFRecord shards `<prefix>-SSSSS-of-NNNNN.tfrecord.gz`.

    Args:
        file_path_prefix: path prefix of the shards.
        num_shards: number of shards (0: the runner decides).
        compresslevel: gzip level (1 fastest, 9 smallest).
    """

    def __init__(self, file_path_prefix: str, num_shards: int = 0, compresslevel: int = GZIP_LEVEL):
        super().__init__()
        self._sink = _GzipTFRecordSink(file_path_prefix, num_shards, compresslevel)

    def expand(self, batches):
        return (batches
                | "FrameRecordBatches" >> beam.Map(frame_records)
                | "WriteFramedRecords" >> iobase.Write(self._sink))
