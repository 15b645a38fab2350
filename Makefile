# loom — build, test, demo, benchmark.
#
#   make          build ./loom (CPU backend)
#   make test     build and run every CPU test; ends with "N passed, N failed"
#   make demo     prepare public-domain English text, train the tiny MLA model for a minute
#   make bench    CPU training throughput against the JAX reference (figures for bench/RESULTS.md)
#
# `make`, `make test` and `make demo` first run scripts/install-deps.sh, a no-op when every Debian
# package the project needs is present.

CC        := mpicc
BLAS_DIR  := /usr/lib/x86_64-linux-gnu/openblas-openmp
BLAS_INC  := /usr/include/x86_64-linux-gnu/openblas-openmp
CFLAGS    ?= -O2 -g
HDF5_DIR  := /usr/lib/x86_64-linux-gnu/hdf5/openmpi
HDF5_INC  := /usr/include/hdf5/openmpi
CFLAGS    += -std=c11 -D_GNU_SOURCE -fopenmp -Wall -Wextra -MMD -MP -I. -I$(BLAS_INC) -I$(HDF5_INC)
LDLIBS    := -L$(BLAS_DIR) -Wl,-rpath,$(BLAS_DIR) -lopenblas -L$(HDF5_DIR) -Wl,-rpath,$(HDF5_DIR) -lhdf5 \
             -linih -lzstd -lxxhash -lpcre2-8 -lcjson -lpthread -lm
BUILD     := build

LIB_SRCS  := $(wildcard core/*.c model/*.c optim/*.c data/*.c parallel/*.c checkpoints/*.c) \
             $(filter-out train/main.c, $(wildcard train/*.c))
LIB_OBJS  := $(LIB_SRCS:%.c=$(BUILD)/%.o)
TEST_SRCS := $(wildcard tests/unit/test_*.c)
TEST_BINS := $(TEST_SRCS:tests/unit/%.c=$(BUILD)/tests/%)
TEST_EXTRA_OBJS := $(BUILD)/tests/ref/refdump.o
CLI_TESTS := $(sort $(wildcard tests/cli/test_*.sh))

.PHONY: all deps test demo bench clean
.SECONDARY: $(TEST_EXTRA_OBJS)
all: loom

deps:
	@scripts/install-deps.sh

$(BUILD)/%.o: %.c | deps
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c $< -o $@

loom: $(LIB_OBJS) $(BUILD)/train/main.o $(BUILD)/plugins/libh5zstd.so
	$(CC) $(CFLAGS) $(LIB_OBJS) $(BUILD)/train/main.o $(LDLIBS) -o $@

# the zstd filter (HDF5 filter id 32015) as a plugin HDF5 tools load through HDF5_PLUGIN_PATH=build/plugins;
# it links zstd only, so it works in any HDF5 1.10+ library (serial h5dump, h5py's own)
$(BUILD)/plugins/libh5zstd.so: checkpoints/zstd_filter.c checkpoints/plugin/h5zstd_plugin.c | deps
	@mkdir -p $(dir $@)
	gcc -O2 -std=c11 -D_GNU_SOURCE -Wall -Wextra -fPIC -shared -I. -I$(HDF5_INC) $(shell mpicc --showme:compile) \
	    $^ -lzstd -o $@

$(BUILD)/tests/%: tests/unit/%.c $(LIB_OBJS) $(TEST_EXTRA_OBJS) | deps
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $< $(LIB_OBJS) $(TEST_EXTRA_OBJS) $(LDLIBS) -o $@

test: loom $(TEST_BINS)
	@OMP_NUM_THREADS=2 tests/run.sh $(TEST_BINS) $(CLI_TESTS)

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

clean:
	rm -rf $(BUILD) loom

-include $(shell find $(BUILD) -name '*.d' 2>/dev/null)
