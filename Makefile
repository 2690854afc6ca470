# The two commands of the README. Each works on a fresh clone with nothing run before it.
.PHONY: demo test setup

# Set up, train on Fashion-MNIST, export ONNX, build the index, evaluate, serve on localhost.
demo:
	scripts/demo.sh

# Set up, build, and run the whole test suite.
test:
	scripts/test.sh

# Only install the pinned runtimes and data (both targets above do this first).
setup:
	scripts/setup.sh --with-test-tools
