rule register:
    """One sequence onto the subject's reference sequence (register.backend, Rigid or Affine, mutual information in the brain)."""
    input:
        unpack(register_inputs),
    output:
        image="results/register/{center}/{subject}/{sequence}.nii.gz",
        transform="results/register/{center}/{subject}/{sequence}.mat",
        record="results/register/{center}/{subject}/{sequence}.json",
    log:
        "logs/register/{center}/{subject}/{sequence}.log",
    benchmark:
        "logs/benchmarks/register/{center}/{subject}/{sequence}.tsv"
    params:
        reference=reference_image,
        moving=moving_image,
        masks=register_flags,
        options=json.dumps(config["register"], sort_keys=True),
        seed=config["seed"],
    threads: register_threads()
    resources:
        mem_mb=mem_mb_for("register"),
        runtime=20,
    conda:
        "../../envs/preprocess.yaml"
    shell:
        "thrombus register --center {wildcards.center} --subject {wildcards.subject} --sequence {wildcards.sequence}"
        " --reference {params.reference:q} --moving {params.moving:q} {params.masks}"
        " --out-image {output.image:q} --out-transform {output.transform:q} --options {params.options:q}"
        " --seed {params.seed} --threads {threads} --record {output.record:q} 2> {log:q}"


rule brainmask:
    """The HD-BET mask carried onto the reference grid (genericLabel interpolation)."""
    input:
        unpack(brainmask_inputs),
    output:
        "results/register/{center}/{subject}/brain_mask.nii.gz",
    log:
        "logs/brainmask/{center}/{subject}.log",
    benchmark:
        "logs/benchmarks/brainmask/{center}/{subject}.tsv"
    params:
        reference=reference_image,
        transform=brainmask_flags,
    threads: 1
    resources:
        mem_mb=mem_mb_for("brainmask"),
        runtime=5,
    conda:
        "../../envs/preprocess.yaml"
    shell:
        "thrombus brainmask --center {wildcards.center} --subject {wildcards.subject}"
        " --native-mask {input.native_mask:q} --reference {params.reference:q} {params.transform}"
        " --out {output:q} 2> {log:q}"
