# sip4ai developer entry points. `make test` works on a fresh Debian/Ubuntu machine (as root,
# or with sudo available): it installs the system packages and the Python environment it needs.

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
APT_PACKAGES := kamailio kamailio-tls-modules sip-tester tcpdump openssl debootstrap \
	systemd-container shellcheck docker-compose iproute2
STAMP := $(VENV)/.installed

.PHONY: all deps sysdeps venv lint typecheck test test-unit test-component test-e2e demo bench \
	bench-startup binary binary-pjsua2 clean

all: test

sysdeps:
	@missing=""; \
	command -v kamailio >/dev/null || missing="$$missing kamailio"; \
	command -v sipp >/dev/null || missing="$$missing sip-tester"; \
	command -v tcpdump >/dev/null || missing="$$missing tcpdump"; \
	command -v openssl >/dev/null || missing="$$missing openssl"; \
	ls /usr/lib/*/kamailio/modules/tls.so >/dev/null 2>&1 || missing="$$missing kamailio-tls-modules"; \
	command -v debootstrap >/dev/null || missing="$$missing debootstrap"; \
	command -v systemd-nspawn >/dev/null || missing="$$missing systemd-container"; \
	command -v shellcheck >/dev/null || missing="$$missing shellcheck"; \
	command -v docker-compose >/dev/null || missing="$$missing docker-compose"; \
	command -v ip >/dev/null || missing="$$missing iproute2"; \
	if [ -n "$$missing" ]; then \
		echo "installing system packages:$$missing"; \
		SUDO=""; [ "$$(id -u)" -eq 0 ] || SUDO="sudo"; \
		$$SUDO apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $(APT_PACKAGES); \
	fi

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@touch $(STAMP)

venv: $(STAMP)

# promtool checks the Prometheus rules and dashboard queries; it is taken out of Debian's
# prometheus package (installing the package itself would start a server).
$(VENV)/bin/promtool: | sysdeps venv
	tmp=$$(mktemp -d) && cd $$tmp && apt-get download -q prometheus >/dev/null && \
	  dpkg-deb -x prometheus_*.deb x && install -m 0755 x/usr/bin/promtool $(CURDIR)/$@; \
	  status=$$?; rm -rf $$tmp; exit $$status

deps: sysdeps venv $(VENV)/bin/promtool

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: venv
	$(VENV)/bin/mypy

# The one test command (README and CI): lint, type check, then every test ring. The e2e ring
# must not skip for want of Kamailio or SIPp here: sysdeps has just installed them.
test: deps lint typecheck
	SIP4AI_E2E_REQUIRED=1 $(VENV)/bin/pytest

test-unit: venv
	$(VENV)/bin/pytest -m unit
test-component: venv
	$(VENV)/bin/pytest -m component
test-e2e: deps
	SIP4AI_E2E_REQUIRED=1 $(VENV)/bin/pytest -m e2e

demo: deps
	$(PY) -m testbed.demo

bench: deps
	$(PY) -m bench.audio_hotpath

# QA load kit (testbed/load, README "Capacity"): N calls of DURATION s each, RATE new calls/s,
# at most N at once. PROFILE inbound | ramp | outbound (sip4ai dials out via POST /api/calls);
# AI mock (OpenAI mock: scripted replies, turns, barge-ins) | file; AUDIO_FILE=x.wav plays that
# file instead. Prints a table; writes bench/results/loadtest-<stamp>.json; exit 1 if a call failed.
N ?= 20
RATE ?= 5
DURATION ?= 10
PROFILE ?= inbound
AI ?= mock
AUDIO_FILE ?=
SOAK_MINUTES ?= 30

.PHONY: loadtest soak
loadtest: deps
	$(PY) -m testbed.load --calls $(N) --rate $(RATE) --duration $(DURATION) \
		--profile $(PROFILE) --ai $(AI) $(if $(AUDIO_FILE),--audio-file $(AUDIO_FILE))

# 30-minute soak (not in CI): 20 simultaneous churning calls; RSS growth and stuck calls.
soak: deps
	$(PY) -m bench.soak --minutes $(SOAK_MINUTES)

binary: venv
	$(VENV)/bin/pyinstaller --noconfirm --clean packaging/pyinstaller.spec

# The same binary with the pjsua2 backend bundled (GPL-2.0-or-later: see README "Licence").
binary-pjsua2: venv
	SIP4AI_WITH_PJSUA2=1 $(VENV)/bin/pyinstaller --noconfirm --clean packaging/pyinstaller.spec

bench-startup: binary
	$(PY) -m bench.startup

clean:
	rm -rf build dist .mypy_cache .ruff_cache .pytest_cache
