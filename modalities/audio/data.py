"""Audio sources: the embedded demo corpus, Hugging Face datasets and local audiofolders.

Every source yields mono float32 waveforms at 16 kHz with an optional utterance
label and optional 10 ms frame labels. Files are decoded here (soundfile for
WAV/FLAC/OGG, torchcodec where installed for the rest), not by ``datasets``, so a
broken file becomes a warning that names it instead of a crash in a worker.
"""
from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mmssl.errors import DataError
from mmssl.media_table import MediaTable
from mmssl.sources import audio_feature, cache_dir, check_columns, open_split
from mmssl.unreadable import Unreadable, replaced

SAMPLE_RATE = 16000


class AudioReadError(DataError):
    pass


def decode(value: Any, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """A ``datasets`` audio value ({"bytes", "path"} or {"array", "sampling_rate"}) or a path
    -> mono float32 waveform (n,) at ``sample_rate``. Raises AudioReadError naming the file."""
    if isinstance(value, (str, os.PathLike)):
        value = {"path": str(value), "bytes": None}
    name = value.get("path") or "<embedded audio>"
    if value.get("array") is not None:
        wav, sr = np.asarray(value["array"], dtype=np.float32), int(value["sampling_rate"])
    else:
        wav, sr = _read(value.get("bytes"), value.get("path"), name)
    if wav.ndim == 2:  # (n, channels) -> mono
        wav = wav.mean(axis=1)
    if wav.size == 0:
        raise AudioReadError(f"{name}: empty audio")
    if sr != sample_rate:
        import torchaudio.functional as AF

        wav = AF.resample(torch.from_numpy(np.ascontiguousarray(wav)), sr, sample_rate).numpy()
    return np.ascontiguousarray(wav, dtype=np.float32)


def _read(data: bytes | None, path: str | None, name: str) -> tuple[np.ndarray, int]:
    import soundfile as sf

    if data is None and path is None:
        raise AudioReadError(f"{name}: neither bytes nor a path")
    try:
        wav, sr = sf.read(io.BytesIO(data) if data is not None else path, dtype="float32", always_2d=False)
        return wav, sr
    except Exception as first:  # noqa: BLE001  soundfile cannot read it: try torchcodec (mp3, m4a, ...) if present
        try:
            from torchcodec.decoders import AudioDecoder
        except (ImportError, OSError, RuntimeError):  # not installed, or no FFmpeg library
            raise AudioReadError(f"{name}: unreadable audio ({first})") from None
        try:
            samples = AudioDecoder(data if data is not None else path).get_all_samples()
            return samples.data.numpy().T, int(samples.sample_rate)
        except Exception as second:  # noqa: BLE001  any decoder failure names the file
            raise AudioReadError(f"{name}: unreadable audio ({second})") from None


class CorpusSplit:
    """One split of a generated corpus (see synthetic.py): label = speaker, frames = phones (10 ms)."""

    def __init__(self, data: dict, name: str):
        self.data, self.name = data, name

    def __len__(self) -> int:
        return len(self.data["audio"])

    def __getitem__(self, i: int) -> dict:
        return {
            "audio": self.data["audio"][i],
            "label": int(self.data["speaker"][i]),
            "frames": self.data["phones"][i],
            "name": f"{self.name}/{i}",
        }


def demo_audio(split: str) -> CorpusSplit:
    """The embedded synthetic speech corpus, generated once and cached."""
    from mmssl.modalities.audio.synthetic import load_demo_corpus

    corpus = load_demo_corpus(cache_dir() / "audio_demo")
    if split not in corpus:
        raise DataError(f"the audio demo has splits {', '.join(corpus)}, not '{split}'")
    return CorpusSplit(corpus[split], f"demo/{split}")


class HFAudio(MediaTable):
    """A map-style ``datasets`` split read as audio, labels mapped to 0..C-1.

    Unreadable or empty WAV / FLAC / OGG files found by a header check are skipped (and counted
    in one warning); a file that fails later is replaced by the next readable one with a warning
    that names it, so training never dies inside a worker.
    """

    option, kind, noun, read_error = "--audio-column", "audio", "audio files", AudioReadError

    def _cast(self, ds: Any, column: str) -> Any:
        import datasets

        # embedded bytes and paths alike become {"bytes", "path"}; mmssl decodes them itself
        if getattr(ds.features[column], "dtype", None) == "large_string":  # csv / json paths
            ds = ds.cast_column(column, datasets.Value("string"))
        return ds.cast_column(column, audio_feature(decode=False))

    def _check(self, path: str) -> str | None:
        import soundfile as sf

        if Path(path).suffix.lower() not in (".wav", ".flac", ".ogg"):
            return None  # no cheap header check for compressed formats: they are checked when read
        try:
            return "empty audio" if sf.info(path).frames == 0 else None
        except Exception as e:  # noqa: BLE001  any failure to read the header skips the file
            return str(e).replace(f"Error opening {path!r}: ", "")  # the listing names the file

    def _read(self, row: int) -> dict:
        audio = decode(self.ds[row][self.column])
        return {"audio": audio, "label": self.label(row), "frames": None, "name": f"{self.name}[{row}]"}


def open_audio(spec: str, split: str, config: str | None = None, audio_column: str = "audio",
               label_column: str | None = None, vocab: list | None = None) -> CorpusSplit | HFAudio:
    """``--dataset`` value -> an audio source for ``split``."""
    if spec == "demo":
        return demo_audio(split)
    ds = open_split(spec, split, config=config)
    return HFAudio(ds, spec, audio_column, label_column, vocab)


def random_crop(audio: np.ndarray, length: int, gen: torch.Generator) -> torch.Tensor:
    """A random window of ``length`` samples; shorter audio is zero-padded at the end."""
    wav = torch.from_numpy(audio)
    if len(wav) <= length:
        return torch.nn.functional.pad(wav, (0, length - len(wav)))
    start = int(torch.randint(len(wav) - length + 1, (1,), generator=gen))
    return wav[start : start + length]


class StreamingAudio(torch.utils.data.IterableDataset):
    """Random crops from a streamed ``datasets`` split, this process's shard only.

    A resumed run replays the stream's shuffled order and discards the examples
    already consumed (without decoding them), so it continues at the same place
    unless files were skipped as unreadable along the way.
    """

    def __init__(self, spec: str, split: str, config: str | None, audio_column: str, crop: int,
                 batch_size: int, world: int, rank: int, seed: int, start_batch: int,
                 make_item: Any = None):
        super().__init__()
        # make_item(waveform, generator) -> batch entry; by default one random crop as "input"
        self.make_item = make_item or (lambda wav, gen: {"input": random_crop(wav, crop, gen)})
        self.spec, self.split, self.config, self.audio_column, self.crop = spec, split, config, audio_column, crop
        self.world, self.rank, self.seed = world, rank, seed
        self.skip = start_batch * batch_size
        first = open_split(spec, split, config=config, streaming=True)  # fail early, in the main process
        check_columns(first, spec, **{"--audio-column": audio_column})

    def __iter__(self):
        from datasets.distributed import split_dataset_by_node

        ds = open_split(self.spec, self.split, config=self.config, streaming=True)
        # datasets.Audio would import torchcodec to encode every streamed example, even a path
        ds = ds.cast_column(self.audio_column, audio_feature(decode=False))
        ds = split_dataset_by_node(ds, rank=self.rank, world_size=self.world).shuffle(seed=self.seed, buffer_size=1000)
        count, epoch = 0, 0
        while True:
            ds.set_epoch(epoch)
            empty, decoded = True, 0
            failed = Unreadable(f"{self.spec} (streamed split '{self.split}')", "audio files")
            for example in ds:
                empty = False
                count += 1
                if count <= self.skip:
                    continue
                try:
                    wav = decode(example[self.audio_column])
                except AudioReadError as e:
                    replaced(e, "the next streamed file")
                    name = (example[self.audio_column] or {}).get("path") or "<embedded audio>"
                    failed.add(Path(name).name, str(e).removeprefix(f"{name}: "))
                    continue
                decoded += 1
                gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.rank * 7_919 + count)
                yield self.make_item(wav, gen)
            if empty:
                raise DataError(f"{self.spec}: the streamed split '{self.split}' is empty")
            if epoch == 0 or not decoded:  # the count once; a pass without one readable file stops, not spins
                failed.report(len(failed.names) + decoded)
            epoch += 1
