# loom — build, test, demo, benchmark.
#
#   make          build ./loom (CPU backend)
#   make test     build and run every CPU test; ends with "N passed, N failed"
#   make demo     prepare public-domain English text, train the tiny MLA model for a minute
#   make bench    CPU training throughput against the JAX reference (figures for bench/RESULTS.md)
#   make test-gpu on a GPU machine: the CUDA backend against the CPU backend
#   make bench-gpu on a GPU machine: loom against PyTorch on the same GPU
#   make fuzz     libFuzzer targets (clang, ASan + UBSan) for every input loom reads, each run for
#                 FUZZ_SECONDS (default 60); fails when one finds a crash
#
# `make`, `make test` and `make demo` first run scripts/install-deps.sh, a no-op when every Debian
# package the project needs is present.

CC        := mpicc
comma     := ,
BLAS_DIR  := /usr/lib/x86_64-linux-gnu/openblas-openmp
BLAS_INC  := /usr/include/x86_64-linux-gnu/openblas-openmp
CFLAGS    ?= -O2 -g
HDF5_DIR  := /usr/lib/x86_64-linux-gnu/hdf5/openmpi
HDF5_INC  := /usr/include/hdf5/openmpi
CFLAGS    += -std=c11 -D_GNU_SOURCE -fopenmp -Wall -Wextra -MMD -MP -I. -I$(BLAS_INC) -I$(HDF5_INC)
LDLIBS    := -L$(BLAS_DIR) -Wl,-rpath,$(BLAS_DIR) -lopenblas -L$(HDF5_DIR) -Wl,-rpath,$(HDF5_DIR) -lhdf5 \
             -linih -lzstd -lxxhash -lpcre2-8 -lcjson -lpthread -lm
BUILD     := build
# the fuzz build (below) links what the CPU build links
FUZZ_LDLIBS := $(LDLIBS) $(shell mpicc --showme:link 2>/dev/null)
# `make test SANITIZE=address,undefined`: everything built with those sanitizers, in its own build folder
ifneq ($(SANITIZE),)
CFLAGS    += -fsanitize=$(SANITIZE) -fno-omit-frame-pointer -fno-sanitize-recover=undefined
BUILD     := build-$(subst $(comma),-,$(SANITIZE))
export ASAN_OPTIONS := detect_leaks=0:abort_on_error=0
export UBSAN_OPTIONS := print_stacktrace=1:halt_on_error=1
endif

LIB_SRCS  := $(wildcard core/*.c model/*.c optim/*.c data/*.c parallel/*.c checkpoints/*.c) \
             $(filter-out train/main.c, $(wildcard train/*.c))
LIB_OBJS  := $(LIB_SRCS:%.c=$(BUILD)/%.o)

# The CUDA backend (model/cuda, and the comm layer's NCCL path in parallel/*.cu) is built whenever nvcc is
# found, on the PATH or in /usr/local/cuda, so CI compiles and links it on every run (for sm_90: H100 / H200);
# train.device picks the backend at run time.
NVCC      := $(or $(shell command -v nvcc 2>/dev/null),$(wildcard /usr/local/cuda/bin/nvcc))
CUDA_HOME := $(patsubst %/bin/nvcc,%,$(NVCC))
CUDA_SRCS := $(if $(NVCC),$(wildcard model/cuda/*.cu parallel/*.cu))
CUDA_OBJS := $(CUDA_SRCS:%.cu=$(BUILD)/%.o)
NVFLAGS   := -O2 -std=c++17 -arch=sm_90 -Xcompiler -fPIC -I. -I$(HDF5_INC) $(shell mpicc --showme:compile 2>/dev/null)
ifneq ($(CUDA_SRCS),)
CFLAGS    += -DLOOM_CUDA
LDLIBS    += -L$(CUDA_HOME)/lib64 -Wl,-rpath,$(CUDA_HOME)/lib64 -lnccl -lcublasLt -lcublas -lcudart -lstdc++
LIB_OBJS  += $(CUDA_OBJS)
endif
TEST_SRCS := $(wildcard tests/unit/test_*.c)
TEST_BINS := $(TEST_SRCS:tests/unit/%.c=$(BUILD)/tests/%)
TEST_EXTRA_OBJS := $(BUILD)/tests/ref/refdump.o
# every GPU test links TEST_EXTRA_OBJS and these: the GPU op tests' harness (tests/gpu/gpu_check.h)
GPU_TEST_EXTRA_OBJS := $(BUILD)/tests/gpu/gpu_check.o
CLI_TESTS := $(sort $(wildcard tests/cli/test_*.sh))

.PHONY: all deps test test-gpu demo bench bench-gpu fuzz clean FORCE
.SECONDARY: $(TEST_EXTRA_OBJS) $(GPU_TEST_EXTRA_OBJS)
all: loom

deps:
	@scripts/install-deps.sh

# every object depends on the flags it was built with (turning the CUDA backend on rebuilds them all)
$(BUILD)/flags: FORCE
	@mkdir -p $(BUILD)
	@echo '$(CFLAGS) $(LDLIBS) $(NVFLAGS)' | cmp -s - $@ || echo '$(CFLAGS) $(LDLIBS) $(NVFLAGS)' >$@

$(BUILD)/%.o: %.c $(BUILD)/flags | deps
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c $< -o $@

$(BUILD)/%.o: %.cu $(BUILD)/flags | deps
	@mkdir -p $(dir $@)
	$(NVCC) $(NVFLAGS) -MMD -MP -c $< -o $@

# (with SANITIZE the binary stays in its build folder, and `make test` runs the unit tests only: the CLI
# tests keep running the plain ./loom)
ifeq ($(SANITIZE),)
loom: $(LIB_OBJS) $(BUILD)/train/main.o $(BUILD)/plugins/libh5zstd.so
	$(CC) $(CFLAGS) $(LIB_OBJS) $(BUILD)/train/main.o $(LDLIBS) -o $@
else
loom: $(BUILD)/loom
$(BUILD)/loom: $(LIB_OBJS) $(BUILD)/train/main.o $(BUILD)/plugins/libh5zstd.so
	$(CC) $(CFLAGS) $(LIB_OBJS) $(BUILD)/train/main.o $(LDLIBS) -o $@
endif

# the zstd filter (HDF5 filter id 32015) as a plugin HDF5 tools load through HDF5_PLUGIN_PATH=build/plugins;
# it links zstd only, so it works in any HDF5 1.10+ library (serial h5dump, h5py's own)
$(BUILD)/plugins/libh5zstd.so: checkpoints/zstd_filter.c checkpoints/plugin/h5zstd_plugin.c | deps
	@mkdir -p $(dir $@)
	gcc -O2 -std=c11 -D_GNU_SOURCE -Wall -Wextra -fPIC -shared -I. -I$(HDF5_INC) $(shell mpicc --showme:compile) \
	    $^ -lzstd -o $@

$(BUILD)/tests/%: tests/unit/%.c $(LIB_OBJS) $(TEST_EXTRA_OBJS) | deps
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $< $(LIB_OBJS) $(TEST_EXTRA_OBJS) $(LDLIBS) -o $@

# the fuzz targets' entry points with a main() that feeds them files (tests/fuzz/replay.c): the seed corpora
# and the regression inputs replayed by tests/cli/test_fuzz_regressions.sh, without libFuzzer
FUZZ_NAMES   := $(patsubst tests/fuzz/fuzz_%.c,%,$(wildcard tests/fuzz/fuzz_*.c))
REPLAY_BINS  := $(FUZZ_NAMES:%=$(BUILD)/tests/fuzz/replay_%)
$(BUILD)/tests/fuzz/replay_%: tests/fuzz/fuzz_%.c tests/fuzz/replay.c tests/fuzz/fuzz.c tests/fuzz/fuzz.h $(LIB_OBJS) | deps
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(filter %.c,$^) $(LIB_OBJS) $(LDLIBS) -o $@

test: loom $(TEST_BINS) $(REPLAY_BINS)
ifeq ($(SANITIZE),)
	@OMP_NUM_THREADS=2 tests/run.sh $(TEST_BINS) $(CLI_TESTS)
else
	@OMP_NUM_THREADS=2 FUZZ_REPLAY_DIR=$(BUILD)/tests/fuzz tests/run.sh $(TEST_BINS) tests/cli/test_fuzz_regressions.sh
endif

# On a GPU machine: every CUDA op against the CPU backend, whole training steps, the NCCL collectives against
# MPI, training on NCCL, the staging fallback
GPU_TEST_SRCS := $(wildcard tests/gpu/test_*.c)
GPU_TEST_BINS := $(GPU_TEST_SRCS:tests/gpu/%.c=$(BUILD)/tests/gpu/%)
$(BUILD)/tests/gpu/%: tests/gpu/%.c $(LIB_OBJS) $(TEST_EXTRA_OBJS) $(GPU_TEST_EXTRA_OBJS) | deps
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $< $(LIB_OBJS) $(TEST_EXTRA_OBJS) $(GPU_TEST_EXTRA_OBJS) $(LDLIBS) -o $@

test-gpu: loom $(GPU_TEST_BINS)
	@test -n "$(CUDA_OBJS)" || { echo "make test-gpu: this build has no CUDA backend (nvcc not found, or no model/cuda sources)"; exit 2; }
	@tests/run.sh $(GPU_TEST_BINS) $(sort $(wildcard tests/gpu/test_*.sh))

bench-gpu: loom $(BUILD)/bench/moe_grouped
	@scripts/bench_gpu.sh

demo: loom
	@scripts/demo.sh

$(BUILD)/bench/%: bench/%.c $(LIB_OBJS) | deps
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $< $(LIB_OBJS) $(LDLIBS) -o $@

bench: loom $(BUILD)/bench/bench_loader
	@scripts/bench_cpu.sh
	@scripts/bench_loader.sh
	@scripts/bench_tokenizer.sh
	@scripts/bench_parallel.sh
	@scripts/bench_moe.sh
	@scripts/bench_ckpt.sh
	@scripts/bench_precision.sh

# `make fuzz`: every tests/fuzz/fuzz_NAME.c linked with libFuzzer, loom's sources built with clang, ASan and
# UBSan (no CUDA) in build-fuzz/; scripts/fuzz.sh runs each on a scratch copy of its seed corpus
# (tests/fuzz/corpus/NAME/) and regression inputs (tests/fuzz/regressions/NAME/) for FUZZ_SECONDS, keeps
# what a crash leaves in build-fuzz/artifacts/ and fails when any target found one
FUZZ_SECONDS ?= 60
FUZZ_BUILD   := build-fuzz
FUZZ_SAN     := -fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer
FUZZ_CFLAGS  := -O1 -g -std=c11 -D_GNU_SOURCE -fopenmp -Wall -Wextra -MMD -MP -I. -I$(BLAS_INC) -I$(HDF5_INC) \
                $(shell mpicc --showme:compile 2>/dev/null) $(FUZZ_SAN)
FUZZ_OBJS    := $(LIB_SRCS:%.c=$(FUZZ_BUILD)/%.o) $(FUZZ_BUILD)/tests/fuzz/fuzz.o
FUZZ_BINS    := $(FUZZ_NAMES:%=$(FUZZ_BUILD)/fuzz_%)
.SECONDARY: $(FUZZ_OBJS) $(FUZZ_NAMES:%=$(FUZZ_BUILD)/tests/fuzz/fuzz_%.o)

$(FUZZ_BUILD)/flags: FORCE
	@mkdir -p $(FUZZ_BUILD)
	@echo '$(FUZZ_CFLAGS) $(FUZZ_LDLIBS)' | cmp -s - $@ || echo '$(FUZZ_CFLAGS) $(FUZZ_LDLIBS)' >$@

$(FUZZ_BUILD)/%.o: %.c $(FUZZ_BUILD)/flags | deps
	@mkdir -p $(dir $@)
	clang $(FUZZ_CFLAGS) -fsanitize=fuzzer-no-link -c $< -o $@

$(FUZZ_BUILD)/fuzz_%: $(FUZZ_BUILD)/tests/fuzz/fuzz_%.o $(FUZZ_OBJS)
	clang $(FUZZ_CFLAGS) -fsanitize=fuzzer $^ $(FUZZ_LDLIBS) -o $@

fuzz: $(FUZZ_BINS)
	@scripts/fuzz.sh $(FUZZ_SECONDS) $(FUZZ_NAMES)

clean:
	rm -rf $(BUILD) $(FUZZ_BUILD) loom

-include $(shell find $(BUILD) $(FUZZ_BUILD) -name '*.d' 2>/dev/null)
