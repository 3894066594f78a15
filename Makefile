# The two commands of the README: `make demo` (the main job: the shipped toy zoo decoding a
# simulated scan live, configs/demo.toml) and `make test`. Both create or reuse the virtual environment .venv inside the checkout and
# reinstall only when pyproject.toml changes (its hash is kept in .venv/.rtdecode-installed).

VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
STAMP := $(VENV)/.rtdecode-installed

.PHONY: demo test venv lint bench-simulate bench-startup eval report zoo zoo32 clean

venv:
	@hash=$$(sha256sum pyproject.toml | cut -c1-64); \
	if [ ! -x "$(PY)" ]; then echo "creating $(VENV)"; $(PYTHON) -m venv "$(VENV)" || exit 1; fi; \
	if [ "$$(cat "$(STAMP)" 2>/dev/null)" != "$$hash" ]; then \
	  echo "installing rtdecode and its dependencies into $(VENV) (first time: a few minutes)"; \
	  "$(PY)" -m pip install --disable-pip-version-check -q -e ".[dev]" || exit 1; \
	  echo "$$hash" > "$(STAMP)"; \
	fi

demo: venv
	$(VENV)/bin/rtdecode demo

test: venv
	$(PY) -m pytest -q

lint: venv
	$(VENV)/bin/ruff check rtdecode tests bench export

bench-simulate: venv
	$(PY) bench/simulate_study.py

# The shipped toy zoo's numbers (README "Decoders"): the shipped checkpoints on the study
# session (simulated deterministically into data/study if absent; ~1.4 GB).
eval: venv
	$(VENV)/bin/rtdecode eval

# The evaluation report (README "Evaluation and report"): REPORT.md, report.json and PNG
# plots in docs/report, from the zoo in runs/zoo when it has a renderer (unet/), else the
# shipped one, on the study session (simulated into data/study if absent). 10-20 min on 2
# cores. Override ZOO=..., ABLATIONS=..., REPORT_OUT=...
ZOO ?= $(if $(wildcard runs/zoo/unet),runs/zoo,rtdecode/zoo/weights)
ABLATIONS ?= runs/ablations
REPORT_OUT ?= docs/report
report: venv
	$(VENV)/bin/rtdecode report --out $(REPORT_OUT) --zoo $(ZOO) \
	  $(if $(wildcard $(ABLATIONS)),--ablations $(ABLATIONS))

# Retrain the whole toy zoo from scratch on 2 cores (about 5 hours) and pack it as the
# shipped float16 copy in rtdecode/zoo/weights. Every step resumes if interrupted. The
# object-weighted UNet fine-tune runs 1,200 steps and is then resumed to 2,400 (a learning-rate
# restart), as the shipped one was trained.
STUDY ?= data/study
RT := $(VENV)/bin/rtdecode
TRAIN_SAD := $(RT) train sad --data $(STUDY) --config configs/study.toml --clip runs/zoo/clip --epochs 12
zoo: venv
	test -f $(STUDY)/simulation.json || $(RT) simulate $(STUDY) --preset study --subjects 1 --seed 0
	$(RT) train clip --data $(STUDY) --out runs/zoo/clip --steps 600
	$(RT) train vae --data $(STUDY) --out runs/zoo/vae --steps 1600 --object-weight 8 --threads 1
	$(RT) train vae-decoder --data $(STUDY) --vae runs/zoo/vae --steps 1500 --object-weight 16 --threads 1
	$(TRAIN_SAD) --out runs/zoo/sad
	$(TRAIN_SAD) --preset mlp --out runs/zoo/mlp
	$(TRAIN_SAD) --noise-free --out runs/zoo/noise_free
	$(RT) train mad --data $(STUDY) --config configs/study.toml --clip runs/zoo/clip --vae runs/zoo/vae --out runs/zoo/mad --epochs 12
	$(RT) train probe --data $(STUDY) --out runs/zoo/probe --steps 4000 --width 32 --what-depth 6 --fresh 1
	$(RT) train fusion --data $(STUDY) --clip runs/zoo/clip --out runs/zoo/fusion.json
	$(RT) train ridge --data $(STUDY) --config configs/study.toml --out runs/zoo/attributes
	$(RT) train unet --data $(STUDY) --clip runs/zoo/clip --vae runs/zoo/vae --out runs/zoo/unet_sd15 --steps 2600 --threads 1
	$(RT) train unet --data $(STUDY) --clip runs/zoo/clip --vae runs/zoo/vae --init runs/zoo/unet_sd15 --schedule zero_snr --lr 1e-4 --out runs/zoo/unet_zsnr --steps 1800 --threads 1
	$(RT) train unet --data $(STUDY) --clip runs/zoo/clip --vae runs/zoo/vae --init runs/zoo/unet_zsnr --schedule zero_snr --lr 1e-4 --object-weight 8 --out runs/zoo/unet --steps 1200 --threads 1
	$(RT) train unet --data $(STUDY) --clip runs/zoo/clip --vae runs/zoo/vae --init runs/zoo/unet_zsnr --schedule zero_snr --lr 1e-4 --object-weight 8 --out runs/zoo/unet --steps 2400 --threads 1
	$(RT) train motion --data $(STUDY) --clip runs/zoo/clip --vae runs/zoo/vae --unet runs/zoo/unet --out runs/zoo/motion --steps 600 --object-weight 8
	$(RT) train unet --data $(STUDY) --clip runs/zoo/clip --vae runs/zoo/vae --init runs/zoo/unet --schedule zero_snr --lr 1e-4 --object-weight 8 --distill-guidance 3 --out runs/zoo/unet_guided --steps 800
	$(TRAIN_SAD) --levels motion,holistic --out runs/ablations/without_anchor
	$(TRAIN_SAD) --levels anchor,holistic --out runs/ablations/without_motion
	$(TRAIN_SAD) --levels anchor,motion --out runs/ablations/without_holistic
	$(RT) zoo pack runs/zoo rtdecode/zoo/weights

# The 32x32-latent renderer (README "The lever that moves shape: a finer latent"): better
# than the shipped renderer from true semantics, worse on background and colour from decoded
# ones, so it is not the shipped default. Trains its VAE, UNet, motion module, guided UNet
# and MAD into $(ZOO32) (about 3.3 hours on 2 cores; every step resumes if interrupted),
# links the shipped clip, SAD, MLP, noise-free SAD, probe, fusion threshold and attribute
# decoder beside them
# and packs a complete float16 zoo into $(ZOO32)/packed: pass `--zoo $(ZOO32)/packed` to
# replay, serve, fidelity, bench render, report.
ZOO32 ?= runs/zoo32
SHIPPED := rtdecode/zoo/weights
TRAIN_UNET32 := $(RT) train unet --data $(STUDY) --clip $(SHIPPED)/clip --vae $(ZOO32)/vae --schedule zero_snr --object-weight 8
zoo32: venv
	test -f $(STUDY)/simulation.json || $(RT) simulate $(STUDY) --preset study --subjects 1 --seed 0
	$(RT) train vae --data $(STUDY) --out $(ZOO32)/vae --channels 16,32 --steps 1600 --object-weight 8
	$(TRAIN_UNET32) --out $(ZOO32)/unet --channels 32,64,128,128 --plain-levels 1 --steps 3500
	$(RT) train motion --data $(STUDY) --clip $(SHIPPED)/clip --vae $(ZOO32)/vae --unet $(ZOO32)/unet --out $(ZOO32)/motion --steps 600 --object-weight 8
	$(TRAIN_UNET32) --init $(ZOO32)/unet --lr 1e-4 --distill-guidance 3 --out $(ZOO32)/unet_guided --steps 800
	$(RT) train mad --data $(STUDY) --config configs/study.toml --clip $(SHIPPED)/clip --vae $(ZOO32)/vae --out $(ZOO32)/mad --epochs 12
	for m in clip sad mlp noise_free probe fusion.json attributes; do ln -sfn $(abspath $(SHIPPED))/$$m $(ZOO32)/$$m; done
	$(RT) zoo pack $(ZOO32) $(ZOO32)/packed

# serve start-up time and RSS, onnxruntime vs torch; needs `rtdecode export --model
# runs/zoo/sad --data DATA` first (override with MODEL=... STORE=...)
bench-startup: venv
	$(PY) bench/serve_startup.py --model $(or $(MODEL),runs/zoo/sad) --store $(or $(STORE),engines)

clean:
	rm -rf data runs .pytest_cache
