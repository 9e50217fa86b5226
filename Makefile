# Entry points; the real work is in scripts/ and meson. See README.md.
MODEL ?= ../shared/models/tinystories6M

.PHONY: all setup build test demo bench fuzz clean

all: build

setup:
	@scripts/setup.sh

build: setup
	@[ -f build/build.ninja ] || meson setup build >/dev/null
	@ninja -C build >/dev/null

test:
	@scripts/test.sh

demo: build
	@scripts/demo.sh "$(MODEL)"

bench: build
	@scripts/bench.sh "$(MODEL)"

# The wire and GGUF fuzzers for FUZZ_SECONDS each (default 600); make test runs them for 60.
FUZZ_SECONDS ?= 600
fuzz: setup
	@[ -f build-fuzz/build.ninja ] || CC=clang meson setup build-fuzz -Dbuildtype=debugoptimized \
	  -Db_sanitize=address,undefined -Db_lundef=false -Dfuzz=true \
	  "-Dc_args=-fsanitize=fuzzer-no-link -fno-sanitize-recover=all" >/dev/null
	@ninja -C build-fuzz tests/fuzz_wire tests/fuzz_gguf >/dev/null
	tests/fuzz/run.sh build-fuzz/tests/fuzz_wire tests/fuzz/seeds $(FUZZ_SECONDS)
	tests/fuzz/run.sh build-fuzz/tests/fuzz_gguf tests/fuzz/seeds-gguf $(FUZZ_SECONDS) 32768

clean:
	rm -rf build build-sanitize build-fuzz
