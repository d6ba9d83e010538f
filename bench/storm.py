def run(args, workdir): return ["(not yet)"]
