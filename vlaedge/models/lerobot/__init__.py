"""LeRobot checkpoints as they are: a `pretrained_model/` folder (config.json with `"type"`,
model.safetensors, policy_preprocessor.json / policy_postprocessor.json and their state files) loads as a
`Policy` with no code to write and no LeRobot import. One module per policy type builds the network with
LeRobot's module and tensor names."""
