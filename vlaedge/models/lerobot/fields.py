"""The config.json fields and processor-step config keys of LeRobot 0.4.x-0.6, as data.

`read_checkpoint` refuses a config.json field or a processor-step config key that is not here (LeRobot's
own loader, draccus, refuses unknown fields too), so a checkpoint of a newer LeRobot whose new field vlaedge
does not know is one line naming it, never a silent default.

Where the lists come from (docs/lerobot_versions.md has the sources):
- `_EXTRACTED_*`: printed by `tests/fixtures/lerobot_versions/extract_fields.py` from LeRobot 0.4.4's
  dataclasses (`PreTrainedConfig` and each `@PreTrainedConfig.register_subclass` config; each
  `@ProcessorStepRegistry.register` step's `get_config` keys). Regenerate, with any LeRobot source folders
  at hand (their union is printed):
  `python tests/fixtures/lerobot_versions/extract_fields.py /tmp/lerobot044/lerobot [.../src/lerobot ...]`
- `_NEWER_*`: what LeRobot 0.5 / 0.6 added, read from their sources by hand (no 0.5 / 0.6 wheel is
  installable here); an entry extracted from a newer source folder by the script above can replace them.
"""

from __future__ import annotations

# LeRobot 0.4.4 (tests/fixtures/lerobot_versions/extract_fields.py)
_EXTRACTED_BASE = frozenset({
    "device", "input_features", "license", "n_obs_steps", "output_features", "pretrained_path", "private",
    "push_to_hub", "repo_id", "tags", "type", "use_amp", "use_peft"})
# PI0Config's fields; 0.4.4's PI05Config declares the same ones (the script prints this set for both types)
_EXTRACTED_PI0 = frozenset({
    "action_expert_variant", "chunk_size", "compile_mode", "compile_model", "dtype", "empty_cameras",
    "freeze_vision_encoder", "gradient_checkpointing", "image_resolution", "max_action_dim",
    "max_period", "max_state_dim", "min_period", "n_action_steps", "normalization_mapping",
    "num_inference_steps", "optimizer_betas", "optimizer_eps", "optimizer_grad_clip_norm",
    "optimizer_lr", "optimizer_weight_decay", "paligemma_variant", "rtc_config", "scheduler_decay_lr",
    "scheduler_decay_steps", "scheduler_warmup_steps", "time_sampling_beta_alpha",
    "time_sampling_beta_beta", "time_sampling_offset", "time_sampling_scale", "tokenizer_max_length",
    "train_expert_only"})
_EXTRACTED_TYPES = {
    "act": frozenset({
        "chunk_size", "dim_feedforward", "dim_model", "dropout", "feedforward_activation", "kl_weight",
        "latent_dim", "n_action_steps", "n_decoder_layers", "n_encoder_layers", "n_heads",
        "n_vae_encoder_layers", "normalization_mapping", "optimizer_lr", "optimizer_lr_backbone",
        "optimizer_weight_decay", "pre_norm", "pretrained_backbone_weights",
        "replace_final_stride_with_dilation", "temporal_ensemble_coeff", "use_vae", "vision_backbone"}),
    "diffusion": frozenset({
        "beta_end", "beta_schedule", "beta_start", "clip_sample", "clip_sample_range", "compile_mode",
        "compile_model", "crop_is_random", "crop_ratio", "crop_shape", "diffusion_step_embed_dim",
        "do_mask_loss_for_padding", "down_dims", "drop_n_last_frames", "horizon", "kernel_size",
        "n_action_steps", "n_groups", "noise_scheduler_type", "normalization_mapping",
        "num_inference_steps", "num_train_timesteps", "optimizer_betas", "optimizer_eps", "optimizer_lr",
        "optimizer_weight_decay", "prediction_type", "pretrained_backbone_weights", "resize_shape",
        "scheduler_name", "scheduler_warmup_steps", "spatial_softmax_num_keypoints",
        "use_film_scale_modulation", "use_group_norm", "use_separate_rgb_encoder_per_camera",
        "vision_backbone"}),
    "smolvla": frozenset({
        "adapt_to_pi_aloha", "add_image_special_tokens", "attention_mode", "chunk_size", "compile_mode",
        "compile_model", "empty_cameras", "expert_width_multiplier", "freeze_vision_encoder",
        "load_vlm_weights", "max_action_dim", "max_period", "max_state_dim", "min_period",
        "n_action_steps", "normalization_mapping", "num_expert_layers", "num_steps", "num_vlm_layers",
        "optimizer_betas", "optimizer_eps", "optimizer_grad_clip_norm", "optimizer_lr",
        "optimizer_weight_decay", "pad_language_to", "prefix_length", "resize_imgs_with_padding",
        "rtc_config", "scheduler_decay_lr", "scheduler_decay_steps", "scheduler_warmup_steps",
        "self_attn_every_n_layers", "tokenizer_max_length", "train_expert_only", "train_state_proj",
        "use_cache", "use_delta_joint_actions_aloha", "vlm_model_name"}),
    "pi0": _EXTRACTED_PI0,
    "pi05": _EXTRACTED_PI0,
}
_EXTRACTED_STEPS = {
    "action_tokenizer_processor": frozenset({
        "action_tokenizer_name", "max_action_tokens", "trust_remote_code"}),
    "device_processor": frozenset({
        "device", "float_dtype"}),
    "normalizer_processor": frozenset({
        "eps", "features", "norm_map", "normalize_observation_keys"}),
    "pi05_prepare_state_tokenizer_processor_step": frozenset(),
    "pi0_new_line_processor": frozenset(),
    "rename_observations_processor": frozenset({
        "rename_map"}),
    "smolvla_new_line_processor": frozenset(),
    "to_batch_processor": frozenset(),
    "to_batch_processor_action": frozenset(),
    "to_batch_processor_complementary_data": frozenset(),
    "to_batch_processor_observation": frozenset(),
    "tokenizer_processor": frozenset({
        "max_length", "padding", "padding_side", "task_key", "tokenizer_name", "truncation"}),
    "unnormalizer_processor": frozenset({
        "eps", "features", "norm_map", "normalize_observation_keys"}),
}

# added in 0.5 / 0.6 (docs/lerobot_versions.md: each with its source)
_NEWER_BASE = frozenset({"pretrained_revision"})  # configs/policies.py
_RELATIVE_ACTIONS = frozenset({"use_relative_actions", "relative_exclude_joints", "action_feature_names"})
_NEWER_TYPES = {
    "smolvla": frozenset({"fine_tune_vision_encoder", "vision_encoder_lr_multiplier"}),
    "pi0": _RELATIVE_ACTIONS,  # huggingface/lerobot#2970, in 0.5.0
    "pi05": _RELATIVE_ACTIONS | {"optimizer_fused"},
}
_NEWER_STEPS = {  # processor/relative_action_processor.py (huggingface/lerobot#2970)
    "relative_actions_processor": frozenset({"enabled", "exclude_joints", "action_names"}),
    "absolute_actions_processor": frozenset({"enabled"}),
}

# config.json fields a newer LeRobot renamed, per type: {name in the newer config.json: the name vlaedge
# reads}. None found for these types in 0.5 / 0.6 (docs/lerobot_versions.md); a rename goes here.
RENAMED: dict[str, dict[str, str]] = {}

# policy types of 0.5 / 0.6 besides 0.4.4's (release notes v0.6.0; allenai/vla-evaluation-harness#88)
NEWER_TYPES = ("gaussian_actor", "molmoact2", "fastwam", "vla_jepa", "lingbot_va")

FIELDS: dict[str, frozenset[str]] = {
    kind: _EXTRACTED_BASE | _NEWER_BASE | fields | _NEWER_TYPES.get(kind, frozenset())
    for kind, fields in _EXTRACTED_TYPES.items()}
STEP_KEYS: dict[str, frozenset[str]] = {**_EXTRACTED_STEPS, **_NEWER_STEPS}
