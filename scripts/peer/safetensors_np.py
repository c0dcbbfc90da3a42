"""Reads a checkpoint's safetensors files with numpy alone (no safetensors package), for the peer
scripts beside this file: synth_to_gguf.py and torch_decode.py."""
import json
import mmap
import os
import struct
import sys


def open_checkpoint(dirname, dtypes=("F32", "BF16")):
    """Maps every tensor of the checkpoint's safetensors files: name -> (numpy array, dtype), the
    array viewing the mapping (float32 for F32, the raw uint16 bits for BF16). Exits naming the
    tensor whose dtype is not in dtypes, or the directory without safetensors files."""
    import numpy as np

    tensors = {}
    for f in sorted(os.listdir(dirname)):
        if not f.endswith(".safetensors"):
            continue
        fh = open(os.path.join(dirname, f), "rb")
        mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        n = struct.unpack("<Q", mm[:8])[0]
        header = json.loads(mm[8:8 + n])
        for name, info in header.items():
            if name == "__metadata__":
                continue
            dtype = info["dtype"]
            if dtype not in dtypes:
                sys.exit(f"{os.path.basename(sys.argv[0])}: {name}: dtype {dtype} (want {' or '.join(dtypes)})")
            np_dtype = np.float32 if dtype == "F32" else np.uint16
            b, e = info["data_offsets"]
            arr = np.frombuffer(mm, dtype=np_dtype, count=(e - b) // np.dtype(np_dtype).itemsize,
                                offset=8 + n + b).reshape(info["shape"])
            tensors[name] = (arr, dtype)
    if not tensors:
        sys.exit(f"{os.path.basename(sys.argv[0])}: {dirname}: no .safetensors files")
    return tensors
