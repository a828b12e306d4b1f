# meshtls front door. Every target installs what it needs (make deps) and builds first.
#   make deps        install the Debian packages (no-op when present)
#   make build       configure and build (build/)
#   make test        the whole suite: unit, privileged (root, netns, BPF), VM (kTLS on Debian kernels),
#                    fuzz smoke, and the unit suite again under ASan/LSan/UBSan
#   make unit        the unprivileged unit suite only (a quick local loop; CI always runs make test)
#   make bench-tls   handshake and relay benchmarks -> tests/bench/results/tls.{json,md}
#   make bench-identity  SVID issuance rate and memory -> tests/bench/results/identity.{json,md}
#   make bench       the load test: meshtls vs plaintext vs stunnel/nginx/haproxy, iperf3, sockperf,
#                    wrk, memory (root) -> tests/load/results/<timestamp>.{json,md,png}
#   make bench-smoke the same, every variant for a second (part of make test)
#   make bench-steering  app -> agent local leg: direct vs steered relay vs sockmap shortcut (root)
#                    -> tests/bench/results/steering.{json,md}
#   make demo        the main job on an embedded default (see README)
BUILD       ?= build
FUZZ_BUILD  ?= build-fuzz
ASAN_BUILD  ?= build-asan
BUILD_TYPE  ?= RelWithDebInfo
SANITIZE    ?=
JOBS        ?= $(shell nproc)
CMAKE_FLAGS ?=

.PHONY: all deps configure build test unit privileged vm fuzz sanitize bench bench-smoke bench-tls bench-identity bench-steering demo format lint clean

all: build

deps:
	@tools/install-deps.sh

$(BUILD)/build.ninja: CMakeLists.txt | deps
	cmake -S . -B $(BUILD) -G Ninja -DCMAKE_BUILD_TYPE=$(BUILD_TYPE) \
	  -DMESHTLS_SANITIZE=$(SANITIZE) -DCMAKE_EXPORT_COMPILE_COMMANDS=ON $(CMAKE_FLAGS)

configure: $(BUILD)/build.ninja

build: deps configure
	cmake --build $(BUILD) -j $(JOBS)

test: build fuzz sanitize
	cd $(BUILD) && ctest --output-on-failure --no-tests=error -j 2

# The unit suite again under AddressSanitizer (with LeakSanitizer) and UBSan, in its own tree.
sanitize: deps
	cmake -S . -B $(ASAN_BUILD) -G Ninja -DCMAKE_BUILD_TYPE=Debug -DMESHTLS_SANITIZE=address,undefined
	cmake --build $(ASAN_BUILD) -j $(JOBS)
	cd $(ASAN_BUILD) && UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
	  ctest --output-on-failure --no-tests=error -L unit -j 2

unit: build
	cd $(BUILD) && ctest --output-on-failure --no-tests=error -L unit -j $(JOBS)

privileged: build
	cd $(BUILD) && ctest --output-on-failure --no-tests=error -L privileged -LE vm

vm: build
	cd $(BUILD) && ctest --output-on-failure --no-tests=error -L vm

# libFuzzer needs clang: the fuzz targets get their own build tree. Their smoke runs are ctest
# tests in that tree, run here for a short, fixed number of seconds each.
fuzz: deps
	cmake -S . -B $(FUZZ_BUILD) -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
	  -DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++ -DMESHTLS_FUZZ=ON
	cmake --build $(FUZZ_BUILD) -j $(JOBS) --target fuzz_targets
	cd $(FUZZ_BUILD) && ctest --output-on-failure --no-tests=error -L fuzz

bench-tls: build
	tests/bench/run-bench-tls.sh $(BUILD)

bench-identity: build
	tests/bench/run-bench-identity.sh $(BUILD)

bench-steering: build
	tests/bench/run-bench-steering.sh $(BUILD)

bench: build
	tests/load/bench.sh $(BUILD)

bench-smoke: build
	tests/load/bench.sh $(BUILD) --smoke

demo: build
	tools/demo.sh $(BUILD)

format:
	git ls-files '*.cc' '*.h' '*.c' | xargs clang-format -i

lint: build
	git ls-files 'userspace/*.cc' 'agent/*.cc' | xargs clang-tidy -p $(BUILD) --quiet

clean:
	rm -rf $(BUILD) $(FUZZ_BUILD) $(ASAN_BUILD)
