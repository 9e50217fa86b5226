# Entry points; the real work is in scripts/ and meson. See README.md.
MODEL ?= ../shared/models/tinystories6M

.PHONY: all setup build test demo bench clean

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

clean:
	rm -rf build build-sanitize
