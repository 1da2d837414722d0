#!/usr/bin/env bash
# The GPU checks, as one script: the CUDA-only tests (no host sync inside a training step, the input
# transforms and the loader on the device, torchvision's JPEG decoder where its extension loads), then
# the training, inference and input-path benchmarks on the device.
# Usage (on a CUDA node, from the repository root, in the project's environment):
#     bash bench/gpu_checks.sh [OUT_DIR]
# Each benchmark also writes its numbers as JSON into OUT_DIR (default: bench-gpu/).
# Peak bf16 TFLOP/s for the MFU column: PEAK_TFLOPS (default 989, an H100/H200 SXM dense bf16).
set -euo pipefail
out=${1:-bench-gpu}
mkdir -p "$out"
export HF_HUB_OFFLINE=1
python -c "import torch; assert torch.cuda.is_available(), 'bench/gpu_checks.sh: no CUDA device'; print(torch.cuda.get_device_name())"
peak=${PEAK_TFLOPS:-989}

# CUDA tests: each skips on CPU, so this is where they run.
python -m pytest -q -rs tests/test_runtime.py tests/test_augment.py tests/test_loader.py 2>&1 | tee "$out/tests.txt"

tt="python bench/train_throughput.py --device cuda --model vit_base_patch16_224 --precision bf16 --peak-tflops $peak"
$tt --fp32-too --determinism --json "$out/train_bf16.json"
$tt --accumulate 2 --json "$out/train_accumulate2.json"
$tt --compile --json "$out/train_compile.json"
python bench/inference.py --device cuda --model vit_base_patch16_224 --image-size 224 --images 4096 --bf16 \
    --json "$out/inference_bf16.json"
python bench/inference.py --device cuda --model convnext_base --image-size 224 --images 4096 --bf16 --channels-last \
    --json "$out/inference_convnext_bf16.json"
# The input path onto the GPU: CPU decoding (torchvision's decode_jpeg where it loads) in 8 threads, then
# with nvJPEG (batched decode_jpeg(device="cuda")); crops and resizes by the batched matmul executor.
dl="python bench/data_loading.py --device cuda --images 4096 --batch-size 256 --workers 8 --repeats 3"
$dl --json "$out/input_path_cpu_decode.json"
PIPELINE_JPEG_DECODER=nvjpeg $dl --json "$out/input_path_nvjpeg.json"
